/**
 * The NCCL communicator of GPU ranks ({@link dev.sparkmoe.gpu.nccl.NcclCommunicator}), over the JavaCPP CUDA presets
 * ({@code org.bytedeco:cuda}, JNI wrappers only: {@code libcudart.so.13} and {@code libnccl.so.2} come from the host,
 * loaded with {@code -Dorg.bytedeco.javacpp.pathsFirst=true} from {@code LD_LIBRARY_PATH}; {@code bin/spark-moe-gpu}
 * finds them).
 *
 * <p>Creating a world: every rank holds a host communicator (the TCP world, or Spark's barrier allGather wrapped as
 * an {@link dev.sparkmoe.gpu.nccl.NcclBootstrap}) and calls
 * {@code NcclCommunicator.create(NcclBootstrap.over(host), NcclOptions.fromEnvironment(env, device))}; one
 * communicator per mesh dimension then comes from {@code world.split(color, key, "ep")}.
 *
 * <p>{@code NCCL_NVLS_ENABLE=0} is required in every rank's environment (NVLink SHARP multicast can take a shared
 * host's GPUs out of service for a long time): the launcher and {@code bin/spark-moe-gpu} set it, and
 * {@code create} refuses to run without it. Nothing here calls {@code cuMulticastCreate}.
 *
 * <p>Device tensors reach NCCL through {@link dev.sparkmoe.gpu.cuda.DeviceMemory}, which the CUDA backend's device
 * handle implements.
 */
package dev.sparkmoe.gpu.nccl;

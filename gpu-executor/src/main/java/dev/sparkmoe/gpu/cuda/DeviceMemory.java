package dev.sparkmoe.gpu.cuda;

/**
 * Device memory as the CUDA backend and the NCCL communicator see it: a CUDA device pointer and the number of bytes behind it.
 *
 * <p>A device {@link dev.sparkmoe.core.tensor.Tensor} whose {@link dev.sparkmoe.core.tensor.Tensor#deviceHandle()}
 * implements this interface can be handed to the tensor forms of {@link dev.sparkmoe.gpu.nccl.NcclCommunicator}; element offsets are
 * turned into byte offsets with the tensor's dtype. The CUDA backend's device handle implements it.
 */
public interface DeviceMemory {

    /** The device address (as {@code CUdeviceptr}/{@code void*}) of the first byte. */
    long address();

    /** Number of bytes addressable from {@link #address()}. */
    long bytes();
}

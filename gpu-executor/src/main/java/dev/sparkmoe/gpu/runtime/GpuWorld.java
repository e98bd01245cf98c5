package dev.sparkmoe.gpu.runtime;

import dev.sparkmoe.gpu.cuda.CudaBackend;
import dev.sparkmoe.gpu.nccl.NcclBootstrap;
import dev.sparkmoe.gpu.nccl.NcclCommunicator;
import dev.sparkmoe.gpu.nccl.NcclOptions;
import dev.sparkmoe.parallel.comm.Communicator;
import java.time.Duration;

/**
 * The device world of a GPU rank: an NCCL communicator bootstrapped over the rank's host world (Spark's in-JVM or
 * TCP world, the launcher's TCP world), with its collectives ordered after the backend's compute stream. Mesh
 * sub-groups split from it inherit that ordering.
 */
public final class GpuWorld {
    private GpuWorld() {
    }

    /**
     * Collective over {@code host}: the NCCL world waits for its peers (initialisation and collectives) as long as
     * {@code host} does ({@link Communicator#timeout()}: {@code training.comm_timeout_s} in a Spark job, the
     * launcher's collective timeout in a standalone one); where {@code host} does not say, as long as the
     * environment's {@link NcclOptions#fromEnvironment} says.
     */
    public static NcclCommunicator create(Communicator host, CudaBackend backend) {
        NcclOptions env = options(backend);
        return create(host, backend, host.timeout().orElse(env.timeout()), host.timeout().orElse(env.initTimeout()));
    }

    /** Collective over {@code host}: every rank calls it with its own backend; {@code timeout} bounds every wait. */
    public static NcclCommunicator create(Communicator host, CudaBackend backend, Duration timeout) {
        return create(host, backend, timeout, timeout);
    }

    private static NcclCommunicator create(Communicator host, CudaBackend backend, Duration timeout,
                                           Duration initTimeout) {
        NcclCommunicator.requireNvlsDisabled();
        // the caller sets both timeouts (the environment's are the fallback when the host world names none)
        NcclOptions options = options(backend).withName("world").withTimeout(timeout).withInitTimeout(initTimeout);
        NcclCommunicator world = NcclCommunicator.create(NcclBootstrap.over(host), options);
        world.attach(backend);
        return world;
    }

    private static NcclOptions options(CudaBackend backend) {
        return NcclOptions.fromEnvironment(System.getenv(), backend.device());
    }
}

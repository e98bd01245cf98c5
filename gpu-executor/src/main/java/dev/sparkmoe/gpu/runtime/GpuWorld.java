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

    /** Collective over {@code host}: every rank calls it with its own backend. */
    public static NcclCommunicator create(Communicator host, CudaBackend backend, Duration timeout) {
        NcclCommunicator.requireNvlsDisabled();
        // the environment may set the init timeout; the caller sets the collectives' timeout
        NcclOptions options = NcclOptions.fromEnvironment(System.getenv(), backend.device()).withName("world")
                .withTimeout(timeout);
        NcclCommunicator world = NcclCommunicator.create(NcclBootstrap.over(host), options);
        world.attach(backend);
        return world;
    }
}

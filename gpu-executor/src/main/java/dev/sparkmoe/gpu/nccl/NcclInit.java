package dev.sparkmoe.gpu.nccl;

import dev.sparkmoe.parallel.comm.CollectiveTimeoutException;
import dev.sparkmoe.parallel.comm.CommunicatorException;
import java.util.Objects;
import java.util.concurrent.locks.LockSupport;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.cuda.global.nccl;
import org.bytedeco.cuda.nccl.ncclComm;
import org.bytedeco.cuda.nccl.ncclConfig_t;
import org.bytedeco.cuda.nccl.ncclUniqueId;
import org.bytedeco.javacpp.BytePointer;
import org.bytedeco.javacpp.Loader;
import org.bytedeco.javacpp.PointerPointer;

/**
 * How NCCL communicators are made: the world by {@code ncclCommInitRankConfig} with a <em>non-blocking</em> config
 * (rank 0 makes the unique id, the bootstrap carries it), sub-groups by {@code ncclCommSplit}, each polled with
 * {@code ncclCommGetAsyncError} until ready or aborted past the init timeout; and each of these non-blocking
 * "control" communicators gets a blocking twin (a blocking split) that runs the collectives. A failed child is aborted
 * here; a failed parent is left to its owner, so that nothing is aborted twice. {@code NCCL_NVLS_ENABLE} must be 0.
 */
final class NcclInit {
    private static final int UNDEF_INT = Integer.MIN_VALUE; // NCCL_CONFIG_UNDEF_INT

    private NcclInit() {
    }

    /** Refuses to go on unless {@code NCCL_NVLS_ENABLE=0} is in this process's environment. */
    static void requireNvlsDisabled() {
        String v = System.getenv(NcclCommunicator.ENV_NVLS);
        if (!"0".equals(v == null ? null : v.strip())) {
            String env = NcclCommunicator.ENV_NVLS;
            throw new IllegalStateException(env + " is " + (v == null ? "unset" : "'" + v + "'")
                    + " but must be 0: NVLink SHARP multicast can take a shared host's GPUs out of service; hint: "
                    + "start ranks with bin/spark-moe-gpu or the launcher (both set it), or export " + env + "=0");
        }
    }

    /** A ready non-blocking world communicator, this rank's key, the context of errors and the init deadline. */
    record Control(ncclComm comm, int key, String ctx, long deadline) {
    }

    /** Collective over the bootstrap's ranks: this rank's ready non-blocking member of a new world. */
    static Control init(NcclBootstrap bootstrap, NcclOptions options) {
        Objects.requireNonNull(bootstrap, "bootstrap");
        Objects.requireNonNull(options, "options");
        requireNvlsDisabled();
        Nccl.Availability a = Nccl.probe();
        if (!a.ok()) {
            throw new IllegalStateException("cannot create NCCL group '" + options.name() + "': " + a.reason());
        }
        if (options.device() >= a.deviceCount()) {
            throw new IllegalArgumentException("CUDA device " + options.device() + " does not exist: " + a.deviceCount()
                    + " visible; hint: one rank per GPU (--nproc <= GPUs), or check CUDA_VISIBLE_DEVICES");
        }
        int n = bootstrap.size();
        int me = bootstrap.rank();
        String ctx = "creating NCCL group '" + options.name() + "' (rank " + me + " of " + n + ", device "
                + options.device() + ")";
        NcclErrors.cudaCheck("cudaSetDevice", cudart.cudaSetDevice(options.device()), ctx, "");
        ncclUniqueId id = new ncclUniqueId();
        byte[] idBytes = new byte[nccl.NCCL_UNIQUE_ID_BYTES];
        BytePointer idView = new BytePointer(id).capacity(nccl.NCCL_UNIQUE_ID_BYTES);
        if (me == 0) {
            NcclErrors.check("ncclGetUniqueId", nccl.ncclGetUniqueId(id), ctx, null);
            idView.get(idBytes);
        }
        byte[] got = bootstrap.broadcastFromRank0(idBytes);
        if (got == null || got.length != nccl.NCCL_UNIQUE_ID_BYTES) {
            throw new CommunicatorException(ctx + ": the bootstrap delivered " + (got == null ? "null" : got.length
                    + " bytes") + " as the unique id; expected " + nccl.NCCL_UNIQUE_ID_BYTES);
        }
        idView.put(got);
        ncclConfig_t cfg = config(false);
        ncclComm c = new ncclComm();
        int r = nccl.ncclCommInitRankConfig(c, n, id, me, cfg);
        long deadline = System.nanoTime() + options.initTimeout().toNanos();
        waitReady(c, r, "ncclCommInitRankConfig", ctx, deadline, options);
        return new Control(c, me, ctx, deadline);
    }

    /**
     * The blocking twin of a ready non-blocking {@code control} (a non-blocking split, polled until {@code deadline})
     * that runs its collectives. On failure both are given up.
     */
    static ncclComm blockingTwin(ncclComm control, int key, NcclOptions options, String ctx, long deadline) {
        try {
            return splitReady(control, 0, key, true, "split(blocking twin)", ctx, deadline, options, () -> { });
        } catch (RuntimeException e) {
            abortQuietly(control); // the new communicator is given up whichever side failed
            throw e;
        }
    }

    /**
     * {@code ncclCommSplit} of a non-blocking {@code parent}: polls the parent until the split is done, then the child
     * until it is ready. Past {@code deadline}, or on an error, a failed child is aborted here; a failed parent is
     * handed to {@code parentFailed} (its owner aborts it, so that nothing is aborted twice). Then it throws, naming
     * the call.
     */
    static ncclComm splitReady(ncclComm parent, int color, int key, boolean blocking, String what, String ctx,
                               long deadline, NcclOptions options, Runnable parentFailed) {
        // With a non-blocking parent NCCL writes the new handle when the split completes, after ncclCommSplit has
        // returned: the out-parameter must outlive the call (a heap PointerPointer, not a temporary of the binding).
        PointerPointer<ncclComm> out = new PointerPointer<>(1);
        int r = nccl.ncclCommSplit(parent, color, key, out, config(blocking));
        try {
            pollReady(parent, r, "ncclCommSplit", ctx + ": " + what, deadline, options);
        } catch (RuntimeException e) {
            parentFailed.run(); // the parent's owner aborts it, once
            throw e;
        }
        ncclComm child = new ncclComm(out.get(0));
        if (child.isNull()) {
            throw new NcclException("ncclCommSplit", nccl.ncclInternalError, ctx + ": " + what
                    + ": NCCL reported the split complete but returned no communicator");
        }
        waitReady(child, nccl.ncclSuccess, "ncclCommSplit", ctx + ": " + what, deadline, options);
        return child;
    }

    /** A config as {@code NCCL_CONFIG_INITIALIZER} with {@code blocking} 0 or 1. */
    private static ncclConfig_t config(boolean blocking) {
        ncclConfig_t cfg = new ncclConfig_t();
        cfg.size(Loader.sizeof(ncclConfig_t.class));
        cfg.magic(nccl.NCCL_API_MAGIC);
        cfg.version(nccl.NCCL_VERSION_CODE);
        cfg.blocking(blocking ? 1 : 0);
        cfg.cgaClusterSize(UNDEF_INT);
        cfg.minCTAs(UNDEF_INT);
        cfg.maxCTAs(UNDEF_INT);
        cfg.netName((BytePointer) null);
        cfg.splitShare(UNDEF_INT);
        cfg.trafficClass(UNDEF_INT);
        cfg.commName((BytePointer) null);
        cfg.collnetEnable(UNDEF_INT);
        cfg.CTAPolicy(UNDEF_INT);
        cfg.shrinkShare(UNDEF_INT);
        cfg.nvlsCTAs(UNDEF_INT);
        cfg.nChannelsPerNetPeer(UNDEF_INT);
        cfg.nvlinkCentricSched(UNDEF_INT);
        cfg.graphUsageMode(UNDEF_INT);
        cfg.numRmaCtx(UNDEF_INT);
        return cfg;
    }

    /** After a non-blocking init or split: polls until ready; on error or past the deadline aborts {@code c}. */
    static void waitReady(ncclComm c, int r, String call, String ctx, long deadline, NcclOptions o) {
        try {
            pollReady(c, r, call, ctx, deadline, o);
        } catch (RuntimeException e) {
            abortQuietly(c);
            throw e;
        }
    }

    /** {@link #waitReady} that leaves aborting {@code c} on failure to the caller. */
    private static void pollReady(ncclComm c, int r, String call, String ctx, long deadline, NcclOptions o) {
        if (r != nccl.ncclSuccess && r != nccl.ncclInProgress) {
            String msg = NcclErrors.describe(call, r, ctx, c);
            throw new NcclException(call, r, msg);
        }
        int[] state = {nccl.ncclInProgress};
        int spins = 0;
        while (true) {
            int q = nccl.ncclCommGetAsyncError(c, state);
            if (q != nccl.ncclSuccess && q != nccl.ncclInProgress) {
                String msg = NcclErrors.describe("ncclCommGetAsyncError", q, ctx + " (after " + call + ")", c);
                throw new NcclException("ncclCommGetAsyncError", q, msg);
            }
            if (state[0] == nccl.ncclSuccess) {
                return;
            }
            if (state[0] != nccl.ncclInProgress) {
                String msg = NcclErrors.describe(call, state[0], ctx, c);
                throw new NcclException(call, state[0], msg);
            }
            if (System.nanoTime() > deadline) {
                throw new CollectiveTimeoutException(ctx + ": " + call + " did not complete within "
                        + o.initTimeout().toMillis() + " ms; the communicator was aborted (ncclCommAbort); hint: a rank"
                        + " did not join (crashed, or called a different collective), or the network between ranks is"
                        + " blocked; NCCL_DEBUG=INFO shows the bootstrap");
            }
            backoff(spins++);
        }
    }

    static void abortQuietly(ncclComm c) {
        try {
            nccl.ncclCommAbort(c); // may answer ncclInProgress on a non-blocking communicator; it tears down anyway
        } catch (Throwable ignored) {
            // nothing better to do: we are already failing with a more precise error
        }
    }

    /** Spins, then yields, then parks ever longer: the wait of every poll loop. */
    static void backoff(int spins) {
        if (spins < 100) {
            Thread.onSpinWait();
        } else if (spins < 1000) {
            Thread.yield();
        } else {
            LockSupport.parkNanos(spins < 5000 ? 20_000 : 200_000);
        }
    }
}

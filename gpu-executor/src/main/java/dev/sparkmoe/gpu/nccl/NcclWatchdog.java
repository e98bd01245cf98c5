package dev.sparkmoe.gpu.nccl;

import java.util.ArrayDeque;
import java.util.function.IntSupplier;
import java.util.logging.Logger;

/**
 * The watchdog of one NCCL group member, as in {@code ProcessGroupNCCL}: a daemon thread, started on first use, that
 * watches the collectives nobody waits on (started ones, and device-tensor ones the host ran ahead of) and the one NCCL
 * call the host may be blocked in (a blocking communicator's enqueue waits for peers that are not connected yet, a
 * finalize for what they owe). One still running past the communicator's timeout aborts it ({@code ncclCommAbort}),
 * which releases the streams waiting on it and makes the blocked call return, with an error; the next call on the
 * communicator throws, naming it. Completed collectives are retired on the caller's thread when a new one is tracked,
 * so asynchronous errors surface there.
 */
final class NcclWatchdog {
    private static final Logger LOG = Logger.getLogger(NcclCommunicator.class.getName());

    private final NcclCalls calls;
    /** Device collectives enqueued by the blocking-API methods and not yet seen complete, oldest first. */
    private final ArrayDeque<NcclWork> inFlight = new ArrayDeque<>();
    private Thread thread;
    private volatile boolean watched = true; // the watchdog runs until close has finalised the communicators
    /** The call the host is in that may block (a blocking communicator's enqueue), for the watchdog; null when none. */
    private volatile String blockedIn;
    private volatile long blockedSince;

    NcclWatchdog(NcclCalls calls) {
        this.calls = calls;
    }

    /**
     * Keeps a collective that nobody waits on under watch: completed ones are retired here (surfacing asynchronous
     * errors on the calling thread), and the watchdog aborts the communicator if the oldest outlives the timeout.
     */
    void track(NcclWork w) {
        synchronized (inFlight) {
            inFlight.addLast(w);
            retireCompleted();
            start();
        }
    }

    /** Under the inFlight lock: starts the watchdog thread on first use. */
    private void start() {
        if (thread == null) {
            thread = new Thread(this::watch, "nccl-watchdog-" + calls.name() + "-r" + calls.rank());
            thread.setDaemon(true);
            thread.start();
        }
    }

    /**
     * An NCCL call that may block the host (the enqueue of a collective on a blocking communicator waits for peers
     * that are not connected yet): the watchdog aborts the communicator if it has not returned within the timeout,
     * which makes it return with an error instead of hanging.
     */
    int blocking(String what, IntSupplier call) {
        synchronized (inFlight) {
            start();
        }
        blockedSince = System.nanoTime();
        blockedIn = what;
        try {
            return call.getAsInt();
        } finally {
            blockedIn = null;
        }
    }

    /** Under the inFlight lock: closes the completed works at the head of the queue. */
    private void retireCompleted() {
        while (!inFlight.isEmpty() && inFlight.peekFirst().isCompleted()) {
            inFlight.pollFirst().close();
        }
    }

    /** Collectives enqueued without waiting that are not yet known to be complete. */
    int inFlight() {
        synchronized (inFlight) {
            return inFlight.size();
        }
    }

    /** Stops watching: the communicators are finalised or aborted. */
    void stop() {
        watched = false;
    }

    /** Releases the events of the works still tracked (after {@link #stop} and a drained stream). */
    void closeAll() {
        synchronized (inFlight) {
            for (NcclWork w : inFlight) {
                w.close();
            }
            inFlight.clear();
        }
    }

    private void watch() {
        NcclOptions options = calls.options();
        long period = Math.max(1, Math.min(50, options.timeout().toMillis() / 10)) * 1_000_000L;
        while (watched && calls.abortedBecause() == null) {
            java.util.concurrent.locks.LockSupport.parkNanos(period);
            synchronized (inFlight) {
                if (!watched) {
                    return;
                }
                try {
                    retireCompleted();
                    NcclWork oldest = inFlight.peekFirst();
                    if (oldest != null && oldest.pastDeadline()) {
                        LOG.severe("watchdog: " + oldest.what() + " on group '" + calls.name() + "' (rank "
                                + calls.rank() + " of " + calls.size() + ") did not complete within "
                                + options.timeout().toMillis() + " ms; aborting the communicator");
                        calls.abort("timeout in " + oldest.what() + " (watchdog)");
                    }
                    String in = blockedIn;
                    if (in != null && calls.abortedBecause() == null
                            && System.nanoTime() - blockedSince > options.timeout().toNanos()) {
                        LOG.severe("watchdog: the host has been blocked enqueueing " + in + " on group '"
                                + calls.name() + "' (rank " + calls.rank() + " of " + calls.size() + ") for more than "
                                + options.timeout().toMillis() + " ms; aborting the communicator");
                        calls.abort("timeout enqueueing " + in + " (watchdog)");
                    }
                } catch (RuntimeException e) {
                    // retireCompleted found a CUDA or NCCL error and aborted the communicator; the next call throws
                    LOG.severe("watchdog: " + e.getMessage());
                    if (calls.abortedBecause() == null) {
                        calls.abort("watchdog: " + e.getMessage());
                    }
                }
            }
        }
    }
}

package dev.sparkmoe.parallel.comm;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.ConcurrentHashMap;

/**
 * A world of in-JVM ranks: threads of one JVM (Spark {@code local[N]} tasks, tests) that talk through shared memory.
 *
 * <p>Either create one and hand {@link #rank(int)} to each thread, or let independent threads find the same world
 * by a key with {@link #join(String, int, Duration)}: the key must be unique per job and per stage attempt (for a
 * Spark barrier stage, e.g. {@code "stage-3.attempt-0"} plus an application id), so that a retried attempt never meets
 * the ranks of the failed one. A joined world leaves the registry once all its ranks have closed their world
 * communicators.
 *
 * <p>Failure: a rank that fails should call {@link #abort(int, Throwable)} (or {@link InJvmCommunicator#abort}):
 * every group of the world fails at once, and every member waiting in, or later entering, a collective gets a
 * {@link CommunicatorException} that names the aborted rank and carries its cause. A rank that never arrives turns
 * the collective into a {@link CollectiveTimeoutException} after {@link #timeout()} on every member that did.
 */
public final class InJvmWorld {

    private static final ConcurrentHashMap<String, InJvmWorld> REGISTRY = new ConcurrentHashMap<>();

    private final String key;
    private final int size;
    private final Duration timeout;
    private final InJvmGroup worldGroup;
    private final List<InJvmGroup> groups = new ArrayList<>();
    private final boolean[] claimed;
    private int closedRanks;
    private String abortMessage;
    private Throwable abortCause;

    private InJvmWorld(String key, int size, Duration timeout) {
        if (size < 1) {
            throw new IllegalArgumentException("world size must be >= 1, got " + size);
        }
        Objects.requireNonNull(timeout, "timeout");
        if (timeout.isNegative() || timeout.isZero()) {
            throw new IllegalArgumentException("collective timeout must be positive, got " + timeout);
        }
        this.key = key;
        this.size = size;
        this.timeout = timeout;
        this.claimed = new boolean[size];
        int[] ranks = new int[size];
        for (int r = 0; r < size; r++) {
            ranks[r] = r;
        }
        this.worldGroup = newGroup("world", ranks, true);
    }

    /** A private world of {@code size} ranks; hand {@link #rank(int)} to each of {@code size} threads. */
    public static InJvmWorld create(int size, Duration timeout) {
        return new InJvmWorld(null, size, timeout);
    }

    /**
     * The world registered under {@code jobKey}, created by the first caller. Every caller must pass the same size;
     * the first caller's timeout applies. The world is removed from the registry when all its ranks have closed.
     */
    public static InJvmWorld join(String jobKey, int size, Duration timeout) {
        Objects.requireNonNull(jobKey, "jobKey");
        InJvmWorld w = REGISTRY.computeIfAbsent(jobKey, k -> new InJvmWorld(k, size, timeout));
        if (w.size != size) {
            throw new IllegalArgumentException("in-JVM world '" + jobKey + "' has size " + w.size
                    + " but this rank joined with size " + size + "; all ranks of a job must agree on the world size"
                    + " (is the key reused across jobs or stage attempts?)");
        }
        return w;
    }

    /** Number of worlds currently registered by {@link #join} (for tests and leak checks). */
    public static int registeredWorlds() {
        return REGISTRY.size();
    }

    /** The world communicator of rank {@code r}; each rank may be claimed once. */
    public synchronized Communicator rank(int r) {
        if (r < 0 || r >= size) {
            throw new IllegalArgumentException("rank " + r + " out of range for world " + label() + " of size "
                    + size);
        }
        if (claimed[r]) {
            throw new IllegalStateException("rank " + r + " of world " + label() + " was already claimed; each rank"
                    + " takes its communicator once (is the same partition running twice?)");
        }
        claimed[r] = true;
        return new InJvmCommunicator(worldGroup, r, r);
    }

    public int size() {
        return size;
    }

    public Duration timeout() {
        return timeout;
    }

    /** The registry key, or null for a world made by {@link #create}. */
    public String key() {
        return key;
    }

    private String label() {
        return key == null ? "(unregistered)" : "'" + key + "'";
    }

    /**
     * Fails every group of this world: each member waiting in a collective, or entering one later, gets a
     * {@link CommunicatorException} naming {@code worldRank} and carrying {@code cause}. Idempotent (the first abort
     * wins).
     */
    public void abort(int worldRank, Throwable cause) {
        List<InJvmGroup> all;
        String msg;
        synchronized (this) {
            if (abortMessage == null) {
                abortMessage = "rank " + worldRank + " of in-JVM world " + label() + " aborted: "
                        + (cause == null ? "(no cause given)" : cause.toString());
                abortCause = cause;
            }
            all = new ArrayList<>(groups);
            msg = abortMessage;
        }
        for (InJvmGroup g : all) {
            g.fail(msg, abortCause);
        }
    }

    synchronized InJvmGroup newGroup(String name, int[] worldRanks) {
        return newGroup(name, worldRanks, false);
    }

    private synchronized InJvmGroup newGroup(String name, int[] worldRanks, boolean isWorld) {
        InJvmGroup g = new InJvmGroup(this, name, worldRanks, isWorld);
        groups.add(g);
        if (abortMessage != null) {
            g.fail(abortMessage, abortCause);
        }
        return g;
    }

    synchronized void groupClosed(InJvmGroup g) {
        // Sub-groups are dropped from the abort list once every member closed them.
        groups.remove(g);
    }

    void worldRankClosed() {
        boolean last;
        synchronized (this) {
            closedRanks++;
            last = closedRanks == size;
        }
        if (last && key != null) {
            REGISTRY.remove(key, this);
        }
    }
}

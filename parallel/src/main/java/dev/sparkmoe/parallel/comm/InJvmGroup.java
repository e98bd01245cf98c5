package dev.sparkmoe.parallel.comm;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;
import java.util.function.Function;

/**
 * The shared state of one in-JVM process group: a generation barrier through which members post the arguments of
 * the collective they call, the mailboxes of point-to-point messages, and the group's failure (once failed, a group
 * stays failed, as an aborted NCCL communicator does).
 *
 * <p>Every collective is two barrier phases: <em>arrive</em> (each member posts a {@link Call} with references to
 * its buffers; the last arriver validates that all members called the same thing) and <em>depart</em> (each member
 * has finished reading the others' buffers, so none may be reused before it). Between them each member computes its
 * own result from the posted buffers, outside the lock.
 */
final class InJvmGroup {

    /** What one member posted for one barrier phase. */
    static final class Call {
        final String op;          // e.g. "allReduceSum"
        final long seq;           // the member's collective sequence number on this group
        final String signature;   // must be equal on every member, e.g. "allReduceSum(float[], len=4)"
        final String localError;  // this member's own argument error, reported by the last arriver; null if none
        final Object payload;     // buffer references and arguments, read by the other members

        Call(String op, long seq, String signature, String localError, Object payload) {
            this.op = op;
            this.seq = seq;
            this.signature = signature;
            this.localError = localError;
            this.payload = payload;
        }
    }

    /** Cross-member validation run by the last arriver: returns an error message or null. */
    interface Validator {
        String validate(Call[] calls);
    }

    private static final class Failure {
        final boolean timeout;
        final String message;
        final Throwable cause;
        final long phase;      // the barrier phase during which the group failed
        final boolean ofCall;  // the message already describes the collective of that phase

        Failure(boolean timeout, String message, Throwable cause, long phase, boolean ofCall) {
            this.timeout = timeout;
            this.message = message;
            this.cause = cause;
            this.phase = phase;
            this.ofCall = ofCall;
        }
    }

    final InJvmWorld world;
    final String name;
    final int size;
    final int[] worldRanks; // group rank -> world rank
    final long timeoutNanos;
    final boolean isWorld;

    private final ReentrantLock lock = new ReentrantLock();
    private final Condition changed = lock.newCondition();
    private long phase;
    private int arrivedCount;
    private final boolean[] arrived;
    private final Call[] calls;
    private Object[] results;
    private final boolean[] closed;
    private int closedCount;
    private Failure failure;
    private final Map<Long, ArrayDeque<float[]>> mailboxes = new HashMap<>();

    InJvmGroup(InJvmWorld world, String name, int[] worldRanks, boolean isWorld) {
        this.isWorld = isWorld;
        this.world = world;
        this.name = name;
        this.size = worldRanks.length;
        this.worldRanks = worldRanks.clone();
        this.timeoutNanos = world.timeout().toNanos();
        this.arrived = new boolean[size];
        this.calls = new Call[size];
        this.closed = new boolean[size];
    }

    String describe(Call c) {
        return c.op + " on group '" + name + "' (sequence #" + c.seq + ")";
    }

    /** "[3]" or, for a group that is not the world, "[3] (world ranks [7])". */
    String ranksText(List<Integer> groupRanks) {
        StringBuilder sb = new StringBuilder(groupRanks.toString());
        if (!isWorld) {
            List<Integer> w = new ArrayList<>();
            for (int r : groupRanks) {
                w.add(worldRanks[r]);
            }
            sb.append(" (world ranks ").append(w).append(')');
        }
        return sb.toString();
    }


    /**
     * One barrier phase. Returns the posted calls of all members (valid until the next phase completes) or throws
     * when the group failed, timed out, or the calls do not match. {@code onComplete}, run by the last arriver under
     * the lock, may compute per-member results (split), returned through {@link #results()}.
     */
    Call[] phase(int rank, long memberPhase, Call call, Validator validator,
                 Function<Call[], Object[]> onComplete) {
        lock.lock();
        try {
            throwIfFailed(call, memberPhase, false);
            if (memberPhase != phase) {
                // Cannot happen while members follow the protocol; guards against one communicator used by two
                // threads at once.
                fail(true, false, describe(call) + ": rank " + rank + " is at barrier phase " + memberPhase
                        + " but the group is at " + phase + "; is one communicator used by two threads?", null);
                throwIfFailed(call, memberPhase, true);
            }
            for (int r = 0; r < size; r++) {
                if (closed[r] && r != rank) {
                    fail(true, false, describe(call) + " can never complete: rank " + ranksText(List.of(r))
                            + " has closed the group", null);
                    throwIfFailed(call, memberPhase, true);
                }
            }
            arrived[rank] = true;
            calls[rank] = call;
            arrivedCount++;
            if (arrivedCount == size) {
                String err = matchError(call);
                if (err == null && validator != null) {
                    err = validator.validate(calls.clone());
                }
                if (err != null) {
                    fail(true, false, err, null);
                    throwIfFailed(call, memberPhase, true);
                }
                results = onComplete == null ? null : onComplete.apply(calls.clone());
                lastCalls = calls.clone();
                arrivedCount = 0;
                Arrays.fill(arrived, false);
                Arrays.fill(calls, null);
                phase++;
                changed.signalAll();
                return lastCalls;
            }
            long deadline = System.nanoTime() + timeoutNanos;
            while (phase == memberPhase && failure == null) {
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    List<Integer> missing = new ArrayList<>();
                    List<Integer> present = new ArrayList<>();
                    for (int r = 0; r < size; r++) {
                        (arrived[r] ? present : missing).add(r);
                    }
                    String stage = call.op.endsWith(" (completion)") ? "never finished" : "never arrived";
                    failTimeout(describe(call) + " timed out after "
                            + TimeUnit.NANOSECONDS.toMillis(timeoutNanos) + " ms: " + missing.size() + " of " + size
                            + " ranks " + stage + ": " + ranksText(missing) + "; arrived: " + present);
                    break;
                }
                try {
                    changed.awaitNanos(left);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    fail(true, false, describe(call) + ": rank " + ranksText(List.of(rank))
                            + " was interrupted while waiting", e);
                }
            }
            if (phase != memberPhase) {
                // The phase completed; its calls stay in lastCalls until the next phase completes, which needs us.
                return lastCalls;
            }
            throwIfFailed(call, memberPhase, true);
            throw new IllegalStateException("unreachable");
        } finally {
            lock.unlock();
        }
    }

    private Call[] lastCalls;

    /** Results computed by the last arriver of the latest completed phase (read right after {@link #phase}). */
    Object[] results() {
        lock.lock();
        try {
            return results;
        } finally {
            lock.unlock();
        }
    }

    private String matchError(Call any) {
        boolean same = true;
        for (int r = 1; r < size; r++) {
            same &= calls[r].signature.equals(calls[0].signature);
        }
        StringBuilder sb = new StringBuilder();
        if (!same) {
            sb.append("mismatched collectives on group '").append(name).append("' (sequence #").append(any.seq)
                    .append("): ");
            for (int r = 0; r < size; r++) {
                sb.append(r == 0 ? "" : ", ").append("rank ").append(r).append(" called ")
                        .append(calls[r].signature);
            }
            sb.append("; every member must call the same collective with agreeing arguments, in the same order");
            return sb.toString();
        }
        for (int r = 0; r < size; r++) {
            if (calls[r].localError != null) {
                sb.append(sb.length() == 0 ? describe(calls[r]) + ": invalid arguments: " : "; ")
                        .append("rank ").append(r).append(": ").append(calls[r].localError);
            }
        }
        return sb.length() == 0 ? null : sb.toString();
    }

    private void throwIfFailed(Call call, long memberPhase, boolean participant) {
        if (failure == null) {
            return;
        }
        String msg = failure.message;
        if (!(participant && failure.ofCall && failure.phase == memberPhase)) {
            msg = describe(call) + (failure.ofCall ? " cannot run: the group failed earlier: " : " failed: ") + msg;
        }
        if (failure.timeout) {
            CollectiveTimeoutException e = new CollectiveTimeoutException(msg);
            if (failure.cause != null) {
                e.initCause(failure.cause);
            }
            throw e;
        }
        throw new CommunicatorException(msg, failure.cause);
    }

    private void fail(boolean ofCall, boolean timeout, String message, Throwable cause) {
        if (failure == null) {
            failure = new Failure(timeout, message, cause, phase, ofCall);
        }
        changed.signalAll();
    }

    private void failTimeout(String message) {
        fail(true, true, message, null);
    }

    /** Marks the group failed (abort of a member, or of the world); every waiter is released at once. */
    void fail(String message, Throwable cause) {
        lock.lock();
        try {
            fail(false, false, message, cause);
        } finally {
            lock.unlock();
        }
    }

    void close(int rank) {
        boolean allClosed;
        lock.lock();
        try {
            if (closed[rank]) {
                return;
            }
            closed[rank] = true;
            closedCount++;
            allClosed = closedCount == size;
            if (arrivedCount > 0 && !arrived[rank] && failure == null) {
                List<Integer> waiting = new ArrayList<>();
                Call c = null;
                for (int r = 0; r < size; r++) {
                    if (arrived[r]) {
                        waiting.add(r);
                        c = calls[r];
                    }
                }
                fail(true, false, describe(c) + " can never complete: rank " + ranksText(List.of(rank))
                        + " closed the group while ranks " + waiting + " wait in it", null);
            }
        } finally {
            lock.unlock();
        }
        if (allClosed) {
            world.groupClosed(this);
        }
    }

    // ---- point to point ----

    private ArrayDeque<float[]> mailbox(int from, int to) {
        return mailboxes.computeIfAbsent((long) from * size + to, k -> new ArrayDeque<>());
    }

    void send(int from, int to, float[] data) {
        lock.lock();
        try {
            throwIfFailedP2p("send from rank " + from + " to rank " + to);
            mailbox(from, to).addLast(data);
            changed.signalAll();
        } finally {
            lock.unlock();
        }
    }

    float[] recv(int from, int to, int len) {
        String what = "recv by rank " + to + " from rank " + from + " on group '" + name + "'";
        lock.lock();
        try {
            long deadline = System.nanoTime() + timeoutNanos;
            ArrayDeque<float[]> box = mailbox(from, to);
            while (box.isEmpty()) {
                throwIfFailedP2p(what);
                if (closed[from]) {
                    fail(false, false, what + " can never complete: rank " + ranksText(List.of(from))
                            + " has closed the group", null);
                    continue;
                }
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    failTimeout(what + " timed out after "
                            + TimeUnit.NANOSECONDS.toMillis(timeoutNanos) + " ms: rank " + ranksText(List.of(from))
                            + " never sent");
                    continue;
                }
                try {
                    changed.awaitNanos(left);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    fail(false, false, what + ": interrupted while waiting", e);
                }
            }
            float[] data = box.pollFirst();
            if (data.length != len) {
                fail(false, false, what + ": rank " + to + " expects " + len + " floats but rank " + from
                        + " sent " + data.length + "; send and recv lengths must agree", null);
                throwIfFailedP2p(what);
            }
            return data;
        } finally {
            lock.unlock();
        }
    }

    private void throwIfFailedP2p(String what) {
        if (failure == null) {
            return;
        }
        String msg = failure.message.startsWith(what) ? failure.message
                : what + " cannot complete: the group failed: " + failure.message;
        if (failure.timeout) {
            throw new CollectiveTimeoutException(msg);
        }
        throw new CommunicatorException(msg, failure.cause);
    }
}

package dev.sparkmoe.parallel.comm;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * A test communicator whose started collectives ({@link #allGatherStart}, {@link #reduceScatterSumStart}) behave as
 * the worst legal GPU schedule: nothing happens until {@link Pending#complete()}, and the receive buffer reads NaN
 * until then. A caller that uses a result before completing it, or never completes it, computes NaN or misses the
 * result. Every rank runs the same program, so deferred collectives still meet in the same order on every rank.
 */
public final class DeferringCommunicator extends ForwardingCommunicator {
    private final AtomicInteger open;
    private final AtomicInteger singles;
    private final AtomicInteger groups;
    private final AtomicInteger wireGroups;

    public DeferringCommunicator(Communicator inner) {
        this(inner, new AtomicInteger(), new AtomicInteger(), new AtomicInteger(), new AtomicInteger());
    }

    private DeferringCommunicator(Communicator inner, AtomicInteger open, AtomicInteger singles,
                                  AtomicInteger groups, AtomicInteger wireGroups) {
        super(inner);
        this.open = open;
        this.singles = singles;
        this.groups = groups;
        this.wireGroups = wireGroups;
    }

    /** Grouped all-gathers started with a BF16 wire ({@link #allGatherStart(List, DType)}). */
    public int wireGroups() {
        return wireGroups.get();
    }

    /** Started collectives of this group and its splits not completed yet. */
    public int open() {
        return open.get();
    }

    /** Collectives started one by one (not as part of a group), over this group and its splits. */
    public int singlesStarted() {
        return singles.get();
    }

    /** Groups started ({@link #allGatherStart(List)}, {@link #reduceScatterSumStart(List)}). */
    public int groupsStarted() {
        return groups.get();
    }

    @Override
    public Pending allGatherStart(Tensor send, int sOff, int len, Tensor recv, int rOff) {
        singles.incrementAndGet();
        Arrays.fill(recv.floats(), rOff, rOff + len * size(), Float.NaN);
        return defer(() -> inner.allGather(send, sOff, len, recv, rOff));
    }

    @Override
    public Pending reduceScatterSumStart(Tensor send, int sOff, Tensor recv, int rOff, int recvLen) {
        singles.incrementAndGet();
        Arrays.fill(recv.floats(), rOff, rOff + recvLen, Float.NaN);
        return defer(() -> inner.reduceScatterSum(send, sOff, recv, rOff, recvLen));
    }

    /** The whole group runs at its one complete(); until then every part's receive buffer reads NaN. */
    @Override
    public Pending allGatherStart(List<Part> parts) {
        groups.incrementAndGet();
        for (Part p : parts) {
            Arrays.fill(p.recv().floats(), p.rOff(), p.rOff() + p.len() * size(), Float.NaN);
        }
        return defer(() -> parts.forEach(p -> inner.allGather(p.send(), p.sOff(), p.len(), p.recv(), p.rOff())));
    }

    /**
     * As {@link #allGatherStart(List)}, honouring a {@link DType#BF16} wire the way NCCL does: every gathered element
     * rounded to bf16, the sender's own slice included, {@code send} untouched. Counted by {@link #wireGroups}.
     */
    @Override
    public Pending allGatherStart(List<Part> parts, DType wire) {
        if (wire == DType.F32) {
            return allGatherStart(parts);
        }
        if (wire != DType.BF16) {
            throw new IllegalArgumentException("wire dtype " + wire + ": this test communicator rounds to BF16 only");
        }
        wireGroups.incrementAndGet();
        Pending gather = allGatherStart(parts);
        return () -> {
            gather.complete();
            for (Part p : parts) {
                float[] r = p.recv().floats();
                for (int i = p.rOff(); i < p.rOff() + p.len() * size(); i++) {
                    r[i] = DType.roundToBf16(r[i]);
                }
            }
        };
    }

    @Override
    public Pending reduceScatterSumStart(List<Part> parts) {
        groups.incrementAndGet();
        for (Part p : parts) {
            Arrays.fill(p.recv().floats(), p.rOff(), p.rOff() + p.len(), Float.NaN);
        }
        return defer(() -> parts.forEach(p -> inner.reduceScatterSum(p.send(), p.sOff(), p.recv(), p.rOff(),
                p.len())));
    }

    private Pending defer(Runnable collective) {
        open.incrementAndGet();
        boolean[] done = {false};
        return () -> {
            if (!done[0]) {
                done[0] = true;
                open.decrementAndGet();
                collective.run();
            }
        };
    }

    @Override
    public Communicator split(int color, int key, String name) {
        return new DeferringCommunicator(inner.split(color, key, name), open, singles, groups, wireGroups);
    }
}

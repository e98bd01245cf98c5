package dev.sparkmoe.gpu.nccl;

import static dev.sparkmoe.gpu.nccl.NcclCalls.ncclType;
import static dev.sparkmoe.gpu.nccl.NcclCalls.raw;
import static dev.sparkmoe.gpu.nccl.NcclCalls.sameDtype;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.gpu.cuda.DeviceMemory;
import dev.sparkmoe.parallel.comm.Communicator.Part;
import java.util.List;
import org.bytedeco.cuda.global.nccl;

/**
 * The collectives on device tensors ({@link Tensor#deviceHandle()} implementing {@link DeviceMemory}), in the tensor's
 * dtype, on the member's stream: each ordered after the work already enqueued on the compute stream and, unless it is
 * a started one, with the compute stream made to wait for it, by events, so the host never waits ({@link NcclWork}).
 * A unit's gathers or reduce-scatters run as one NCCL group.
 */
final class DeviceCollectives {
    private final NcclCalls calls;
    private final HostCollectives host;

    DeviceCollectives(NcclCalls calls, HostCollectives host) {
        this.calls = calls;
        this.host = host;
    }

    /** In-place sum of device tensor elements {@code [off, off+len)}, enqueued. */
    NcclWork allReduceSum(Tensor buf, int off, int len) {
        String what = "allReduceSum(" + buf.dtype() + " x " + len + ")";
        long p = calls.devAddress(what, buf, off, len);
        return calls.deviceOp(what, () -> calls.enqueue(what, "ncclAllReduce", () -> nccl.ncclAllReduce(raw(p), raw(p),
                len, ncclType(what, buf.dtype()), nccl.ncclSum, calls.comm(), calls.stream())));
    }

    /** In-place sum of {@code count} elements of {@code dtype} at a raw device pointer, enqueued. */
    NcclWork allReduceSum(DeviceMemory buf, long count, DType dtype) {
        String what = "allReduceSum(" + dtype + " x " + count + ")";
        if (count < 0 || count * dtype.byteSize() > buf.bytes()) {
            throw new IndexOutOfBoundsException(what + ": " + count + " elements do not fit " + buf.bytes() + " bytes");
        }
        long p = buf.address();
        return calls.deviceOp(what, () -> calls.enqueue(what, "ncclAllReduce", () -> nccl.ncclAllReduce(raw(p), raw(p),
                count, ncclType(what, dtype), nccl.ncclSum, calls.comm(), calls.stream())));
    }

    /**
     * The device all-gather; {@code computeWaits} as in {@link NcclCalls#deviceOp(String, boolean, NcclCalls.Enqueue)}.
     */
    NcclWork allGather(Tensor send, int sOff, int len, Tensor recv, int rOff, boolean computeWaits) {
        String what = "allGather(" + send.dtype() + " x " + len + (computeWaits ? ")" : ", started)");
        sameDtype(what, send, recv);
        long s = calls.devAddress(what + " send", send, sOff, len);
        long r = calls.devAddress(what + " recv", recv, rOff, (long) calls.size() * len);
        return calls.deviceOp(what, computeWaits, () -> calls.enqueue(what, "ncclAllGather",
                () -> nccl.ncclAllGather(raw(s), raw(r), len, ncclType(what, send.dtype()), calls.comm(),
                        calls.stream())));
    }

    /** The device reduce-scatter (sum); {@code computeWaits} as in {@link #allGather}. */
    NcclWork reduceScatterSum(Tensor send, int sOff, Tensor recv, int rOff, int recvLen, boolean computeWaits) {
        String what = "reduceScatterSum(" + send.dtype() + " x " + calls.size() + " x " + recvLen
                + (computeWaits ? ")" : ", started)");
        sameDtype(what, send, recv);
        long s = calls.devAddress(what + " send", send, sOff, (long) calls.size() * recvLen);
        long r = calls.devAddress(what + " recv", recv, rOff, recvLen);
        return calls.deviceOp(what, computeWaits, () -> calls.enqueue(what, "ncclReduceScatter",
                () -> nccl.ncclReduceScatter(raw(s), raw(r), recvLen, ncclType(what, send.dtype()), nccl.ncclSum,
                        calls.comm(), calls.stream())));
    }

    /** Broadcast of device tensor elements from {@code root}; enqueued. */
    NcclWork broadcast(Tensor buf, int off, int len, int root) {
        String what = "broadcast(" + buf.dtype() + " x " + len + ", root " + root + ")";
        calls.checkPeer(what, root);
        long p = calls.devAddress(what, buf, off, len);
        return calls.deviceOp(what, () -> calls.enqueue(what, "ncclBroadcast", () -> nccl.ncclBroadcast(raw(p), raw(p),
                len, ncclType(what, buf.dtype()), root, calls.comm(), calls.stream())));
    }

    /**
     * All-to-all with uneven splits of device tensors (ncclSend/ncclRecv in one group), laid out as the array form;
     * the split sizes are checked against every peer's first (a host round over NCCL); enqueued.
     */
    NcclWork allToAll(Tensor send, int[] sendCounts, Tensor recv, int[] recvCounts) {
        String what = "allToAll(" + send.dtype() + ")";
        sameDtype(what, send, recv);
        long[] tot = host.checkSplits(what, sendCounts, recvCounts);
        long s = calls.devAddress(what + " send", send, 0, tot[0]);
        long r = calls.devAddress(what + " recv", recv, 0, tot[1]);
        int es = send.dtype().byteSize();
        int type = ncclType(what, send.dtype());
        return calls.deviceOp(what, () -> calls.groupedExchange(what, s, sendCounts, r, recvCounts, es, type));
    }

    /** The started all-gathers ({@code gather}) or reduce-scatters (sum) of a unit's parts, as one NCCL group. */
    NcclWork grouped(boolean gather, List<Part> parts) {
        String what = (gather ? "allGather" : "reduceScatterSum") + "(group of " + parts.size() + ", started)";
        int n = parts.size();
        long[] s = new long[n];
        long[] r = new long[n];
        int[] type = new int[n];
        for (int i = 0; i < n; i++) {
            Part p = parts.get(i);
            String part = what + " part " + i;
            sameDtype(part, p.send(), p.recv());
            long full = (long) calls.size() * p.len();
            s[i] = calls.devAddress(part + " send", p.send(), p.sOff(), gather ? p.len() : full);
            r[i] = calls.devAddress(part + " recv", p.recv(), p.rOff(), gather ? full : p.len());
            type[i] = ncclType(part, p.send().dtype());
        }
        return calls.deviceOp(what, false, () -> calls.inGroup(what, () -> {
            for (int i = 0; i < n; i++) {
                int len = parts.get(i).len();
                if (gather) {
                    calls.groupCall("ncclAllGather", nccl.ncclAllGather(raw(s[i]), raw(r[i]), len, type[i],
                            calls.comm(), calls.stream()), what, " part ", i);
                } else {
                    calls.groupCall("ncclReduceScatter", nccl.ncclReduceScatter(raw(s[i]), raw(r[i]), len, type[i],
                            nccl.ncclSum, calls.comm(), calls.stream()), what, " part ", i);
                }
            }
        }));
    }
}

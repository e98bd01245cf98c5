package dev.sparkmoe.gpu.nccl;

import static dev.sparkmoe.gpu.nccl.NcclCalls.raw;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.gpu.cuda.CudaBackend;
import dev.sparkmoe.gpu.cuda.DeviceMemory;
import dev.sparkmoe.parallel.comm.Communicator.Part;
import dev.sparkmoe.parallel.comm.Pending;
import java.util.List;
import org.bytedeco.cuda.global.nccl;

/**
 * A unit's parameter all-gathers with the values on the wire as bf16 (FSDP2's bf16 param dtype): on the member's
 * stream each part's {@code send} slice is rounded (nearest even) into its rank's slot of a bf16 buffer and one NCCL
 * group gathers every part in place in bf16. Half the bytes of the f32 gather; every received element, this rank's
 * own slice included, is the bf16 rounding of what was sent. The bf16 buffer (all parts, 256-byte aligned slots) comes
 * from the attached backend's allocator. At {@link Pending#complete()}, once the compute stream waits for the gather,
 * the backend adopts each part's slot as the bf16 image of its {@code recv} range
 * ({@link CudaBackend#adoptBf16Images}; it owns the buffer from then on): the grouped GEMM reads the gathered expert
 * weights in bf16 as they arrived, and the f32 values are widened into place only where something reads them. Where
 * a {@code recv} is of another backend, each part is widened into its f32 {@code recv} on the member's stream right
 * after the gather and the buffer goes back at {@link Pending#complete()}.
 */
final class Bf16WireGather {
    private final NcclCalls calls;

    Bf16WireGather(NcclCalls calls) {
        this.calls = calls;
    }

    /** Starts the gather of f32 device {@code parts} in bf16 with {@code backend}'s kernels and memory. */
    Pending start(List<Part> parts, CudaBackend backend) {
        String what = "allGather(group of " + parts.size() + ", bf16 wire, started)";
        int n = parts.size();
        int size = calls.size();
        long[] s = new long[n];      // f32 send
        long[] r = new long[n];      // f32 recv
        long[] lens = new long[n];   // elements per rank
        long[] fulls = new long[n];  // elements gathered
        long[] wire16 = new long[n]; // the part's bf16 slot: its offset in the buffer, then its address
        long[] mine = new long[n];   // this rank's slice of the slot
        long bytes = 0;
        for (int i = 0; i < n; i++) {
            Part p = parts.get(i);
            String part = what + " part " + i;
            lens[i] = p.len();
            fulls[i] = (long) size * p.len();
            s[i] = calls.devAddress(part + " send", p.send(), p.sOff(), p.len());
            r[i] = calls.devAddress(part + " recv", p.recv(), p.rOff(), fulls[i]);
            wire16[i] = bytes;
            bytes += (2 * fulls[i] + 255) & ~255L;
        }
        Tensor buffer = backend.empty(DType.F32, (int) Math.max(1, (bytes + 3) / 4));
        long base = ((DeviceMemory) buffer.deviceHandle()).address();
        for (int i = 0; i < n; i++) {
            wire16[i] += base;
            mine[i] = wire16[i] + 2 * calls.rank() * lens[i];
        }
        boolean images = parts.stream().allMatch(p -> backend.owns(p.recv()));
        NcclWork w;
        try {
            w = calls.deviceOp(what, false, () -> {
                backend.roundToBf16(s, mine, lens, calls.stream()); // every part in one launch
                calls.inGroup(what, () -> {
                    for (int i = 0; i < n; i++) {
                        calls.groupCall("ncclAllGather", nccl.ncclAllGather(raw(mine[i]), raw(wire16[i]), lens[i],
                                nccl.ncclBfloat16, calls.comm(), calls.stream()), what, " part ", i);
                    }
                });
                if (!images) {
                    backend.widenBf16(wire16, r, fulls, calls.stream());
                }
            });
        } catch (RuntimeException e) {
            backend.release(buffer);
            throw e;
        }
        Pending gathered = calls.started(w);
        return Pending.once(() -> {
            try {
                gathered.complete(); // the compute stream now waits for the gather
            } catch (RuntimeException e) {
                backend.release(buffer);
                throw e;
            }
            if (!images) {
                backend.release(buffer);
                return;
            }
            Tensor[] targets = new Tensor[n];
            long[] offs = new long[n];
            for (int i = 0; i < n; i++) {
                targets[i] = parts.get(i).recv();
                offs[i] = parts.get(i).rOff();
            }
            backend.adoptBf16Images(targets, offs, wire16, fulls, buffer); // the buffer is the backend's now
        });
    }
}

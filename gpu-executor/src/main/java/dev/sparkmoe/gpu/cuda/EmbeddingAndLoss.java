package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.gpu.cuda.KernelLauncher.aligned16;
import static dev.sparkmoe.gpu.cuda.KernelLauncher.rowThreads;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.Arrays;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.DoublePointer;

/**
 * The ends of the model: the token embedding (forward: a row gather; backward: each table row that a token holds
 * gets its tokens' gradient rows added in token order by one block, from a stable sort of the ids made on the host,
 * so that a step's gradients are the same bits at every run) and the cross-entropy loss with its gradient in one pass
 * (written over the logits when the caller passes them as dLogits; the loss summed in f64 in a fixed order). Ids
 * outside the vocabulary are recorded in the error word ({@link KernelErrors}), or refused by name where the host
 * reads them. Called under the backend's lock.
 */
final class EmbeddingAndLoss {
    private static final String K = KernelLauncher.EMBEDDING_LOSS;

    private final CudaDevice device;
    private final CudaMemory memory;
    private final KernelLauncher launcher;
    private final KernelErrors errors;
    private final Transfers transfers;

    EmbeddingAndLoss(CudaDevice device, CudaMemory memory, KernelLauncher launcher, KernelErrors errors,
                     Transfers transfers) {
        this.device = device;
        this.memory = memory;
        this.launcher = launcher;
        this.errors = errors;
        this.transfers = transfers;
    }

    void embeddingForward(Tensor table, Tensor ids, int tokens, int hidden, Tensor out) {
        CudaMemory.requireI32(ids, "ids");
        if (tokens == 0) {
            return;
        }
        int rows = table.numel() / hidden;
        long n = (long) tokens * hidden;
        launcher.launch1D(K, "embedding_fwd", n, memory.addr(table, "table", 0, (long) rows * hidden), rows,
                memory.addr(ids, "ids", 0, tokens), tokens, hidden, memory.addr(out, "out", 0, n), errors.address());
    }

    void embeddingBackward(Tensor dOut, Tensor ids, int tokens, int hidden, Tensor dTable) {
        CudaMemory.requireI32(ids, "ids");
        if (tokens == 0) {
            return;
        }
        int rows = dTable.numel() / hidden;
        long n = (long) tokens * hidden;
        long dOutAt = memory.addr(dOut, "dOut", 0, n);
        long table = memory.addr(dTable, "dTable", 0, (long) rows * hidden);
        if (ids.numel() < tokens) {
            throw new IndexOutOfBoundsException("ids: elements [0, " + tokens + ") of " + ids + " (" + ids.numel()
                    + " elements)");
        }
        int[] plan = runsById(Arrays.copyOf(transfers.download(ids).ints(), tokens), rows);
        int runs = (plan.length - tokens - 1) / 2;
        Tensor p = transfers.upload(Tensor.ofInts(plan, plan.length));
        try {
            long pa = memory.addr(p, "embedding runs", 0, plan.length);
            launcher.launch(K, "embedding_bwd_runs", runs, 1, Math.min(256, (hidden + 31) / 32 * 32), 0, dOutAt, pa,
                    pa + 4L * tokens, pa + 4L * (tokens + runs + 1), hidden, table);
        } finally {
            memory.release(p);
        }
    }

    /**
     * The token positions sorted by id, each id's positions in token order, and the runs of equal ids in that order:
     * {@code [order (tokens) | runStart (runs + 1) | runId (runs)]}. An id outside [0, rows) is refused, naming it.
     */
    static int[] runsById(int[] id, int rows) {
        int tokens = id.length;
        long[] key = new long[tokens]; // (id, position): sorted, the positions of each id stay in token order
        for (int n = 0; n < tokens; n++) {
            if (id[n] < 0 || id[n] >= rows) {
                throw new IllegalArgumentException("embeddingBackward: token id " + id[n] + " at position " + n
                        + " is outside the table [0, " + rows + ")");
            }
            key[n] = ((long) id[n] << 32) | n;
        }
        java.util.Arrays.sort(key);
        int runs = 0;
        for (int p = 0; p < tokens; p++) {
            if (p == 0 || key[p] >>> 32 != key[p - 1] >>> 32) {
                runs++;
            }
        }
        int[] plan = new int[tokens + 2 * runs + 1];
        int r = 0;
        for (int p = 0; p < tokens; p++) {
            plan[p] = (int) key[p];
            if (p == 0 || key[p] >>> 32 != key[p - 1] >>> 32) {
                plan[tokens + r] = p;
                plan[tokens + runs + 1 + r] = (int) (key[p] >>> 32);
                r++;
            }
        }
        plan[tokens + runs] = tokens;
        return plan;
    }

    /** The summed loss over {@code rows} (waits for the device); dLogits = gradScale * d(loss)/d(logits). */
    double crossEntropy(Tensor logits, Tensor targets, int rows, int vocab, float gradScale, Tensor dLogits) {
        CudaMemory.requireI32(targets, "targets");
        if (rows == 0) {
            errors.syncAndCheck();
            return 0.0;
        }
        long n = (long) rows * vocab;
        Tensor rowLoss = memory.scratch(DType.I64, rows + 1); // doubles
        try {
            long rl = memory.addr(rowLoss, "rowLoss", 0, rows + 1);
            boolean halfIn = logits.dtype() == DType.BF16; // a chunk written by the GEMMs in their dtype
            boolean half = dLogits.dtype() == DType.BF16; // the gradient in the GEMMs' dtype (Backend.gemmDType)
            if (halfIn && !half) {
                throw new IllegalArgumentException("crossEntropy on BF16 logits " + logits + " writes a BF16 gradient, "
                        + "not " + dLogits + " (pass a BF16 dLogits, the logits themselves included)");
            }
            long la = halfIn ? memory.addrOf(logits, DType.BF16, "logits", 0, n) : memory.addr(logits, "logits", 0, n);
            long da = half ? memory.addrOf(dLogits, DType.BF16, "dLogits", 0, n) : memory.addr(dLogits, "dLogits", 0, n);
            boolean vec = vocab % 4 == 0 && vocab >= 4096 && la % (halfIn ? 8 : 16) == 0 && da % (half ? 8 : 16) == 0;
            launcher.launch(K, (vec ? "cross_entropy_fwd_bwd_v4" : "cross_entropy_fwd_bwd")
                            + (halfIn ? "_bf16in" : half ? "_bf16" : ""),
                    rows, 1, vocab >= 4096 ? 512 : rowThreads(vocab), 0, la,
                    memory.addr(targets, "targets", 0, rows), rows, vocab, gradScale, da, rl, errors.address());
            launcher.launch(KernelLauncher.ELEMENTWISE, "sum_partials_f64", 1, 1, 1024, 0, rl, rows, rl + 8L * rows);
            return readDouble(rl + 8L * rows);
        } finally {
            memory.release(rowLoss);
        }
    }

    private double readDouble(long address) {
        try (DoublePointer d = new DoublePointer(1)) {
            Cuda.check(cudart.cudaMemcpyAsync(d, RawPointer.of(address, 0), 8, cudart.cudaMemcpyDeviceToHost,
                    device.stream()), "cudaMemcpyAsync(device -> host, 8 B)");
            errors.syncAndCheck();
            return d.get();
        }
    }
}

package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.gpu.cuda.KernelLauncher.aligned16;
import static dev.sparkmoe.gpu.cuda.KernelLauncher.rowThreads;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.DoublePointer;

/**
 * The ends of the model: the token embedding (forward: a row gather; backward: each table row that a token holds
 * gets its tokens' gradient rows added in token order by the block of its first token, which finds them on the
 * device, so that a step's gradients are the same bits at every run and the host never waits for the ids) and the
 * cross-entropy loss with its gradient in one pass (written over the logits when the caller passes them as dLogits; the loss summed in f64 in a fixed order). Ids
 * outside the vocabulary are recorded in the error word ({@link KernelErrors}). Called under the backend's lock.
 */
final class EmbeddingAndLoss {
    private static final String K = KernelLauncher.EMBEDDING_LOSS;
    /** embedding_bwd_tokens's largest block (EMBED_BWD_THREADS in embedding_loss.cu). */
    private static final int EMBED_BWD_THREADS = 256;

    private final CudaDevice device;
    private final CudaMemory memory;
    private final KernelLauncher launcher;
    private final KernelErrors errors;

    EmbeddingAndLoss(CudaDevice device, CudaMemory memory, KernelLauncher launcher, KernelErrors errors) {
        this.device = device;
        this.memory = memory;
        this.launcher = launcher;
        this.errors = errors;
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
        launcher.launch(K, "embedding_bwd_tokens", tokens, 1, Math.min(EMBED_BWD_THREADS, (hidden + 31) / 32 * 32), 0,
                memory.addr(dOut, "dOut", 0, n), memory.addr(ids, "ids", 0, tokens), tokens, hidden, rows,
                memory.addr(dTable, "dTable", 0, (long) rows * hidden), errors.address());
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

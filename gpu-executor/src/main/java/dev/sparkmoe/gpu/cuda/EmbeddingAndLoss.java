package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.gpu.cuda.KernelLauncher.aligned16;
import static dev.sparkmoe.gpu.cuda.KernelLauncher.rowThreads;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.DoublePointer;

/**
 * The ends of the model: the token embedding (forward: a row gather; backward: atomicAdd into the table's rows, the
 * one kernel whose summation order is not fixed) and the cross-entropy loss with its gradient in one pass (written
 * over the logits when the caller passes them as dLogits; the loss summed in f64 in a fixed order). Ids outside the
 * vocabulary are recorded in the error word ({@link KernelErrors}). Called under the backend's lock.
 */
final class EmbeddingAndLoss {
    private static final String K = KernelLauncher.KERNELS;

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
        launcher.launch1D(K, "embedding_bwd", n, memory.addr(dOut, "dOut", 0, n), memory.addr(ids, "ids", 0, tokens),
                tokens, hidden, memory.addr(dTable, "dTable", 0, (long) rows * hidden), rows, errors.address());
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
            long la = memory.addr(logits, "logits", 0, n);
            boolean half = dLogits.dtype() == DType.BF16; // the gradient in the GEMMs' dtype (Backend.gemmDType)
            long da = half ? memory.addrOf(dLogits, DType.BF16, "dLogits", 0, n) : memory.addr(dLogits, "dLogits", 0, n);
            boolean vec = vocab % 4 == 0 && vocab >= 4096 && aligned16(la) && da % (half ? 8 : 16) == 0;
            launcher.launch(K, (vec ? "cross_entropy_fwd_bwd_v4" : "cross_entropy_fwd_bwd") + (half ? "_bf16" : ""),
                    rows, 1, vocab >= 4096 ? 512 : rowThreads(vocab), 0, la,
                    memory.addr(targets, "targets", 0, rows), rows, vocab, gradScale, da, rl, errors.address());
            launcher.launch(K, "sum_partials_f64", 1, 1, 1024, 0, rl, rows, rl + 8L * rows);
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

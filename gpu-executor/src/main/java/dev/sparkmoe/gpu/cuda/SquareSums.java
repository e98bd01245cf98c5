package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.DoublePointer;
import org.bytedeco.javacpp.LongPointer;

/**
 * Sums of squares of many tensors, each in f64 and in a fixed order: a kernel writes one partial sum per block of
 * tensor i's grid at {@link #partials(int)} ({@code blocks[i]} of them), then {@link #finish} adds each tensor's
 * partials in order (one launch for all of them) and brings the sums to the host. The gradient norm's two users share
 * it: {@link Elementwise#sumSquares}, whose kernels do nothing else, and {@link AdamWKernel}, whose step reads the
 * gradients anyway. Scratch (8-byte cells): the sums, the partials, then the table {x, n, blocks, partial} of every
 * tensor that the kernels read ({@link #describe}, {@link #table}); the high half of the blocks cell says whether x is
 * bf16 (1) or f32 (0), for {@code sum_squares_partial_multi_mixed}. Called under the backend's lock.
 */
final class SquareSums implements AutoCloseable {
    private final CudaDevice device;
    private final CudaMemory memory;
    private final KernelLauncher launcher;
    private final KernelErrors errors;
    private final int count;
    private final Tensor scratch;
    private final long base;
    private final long[] desc;
    private final long tableAddress; // where the table goes, after the partials
    private boolean uploaded;

    SquareSums(CudaDevice device, CudaMemory memory, KernelLauncher launcher, KernelErrors errors, int[] blocks) {
        this.device = device;
        this.memory = memory;
        this.launcher = launcher;
        this.errors = errors;
        this.count = blocks.length;
        long cells = count;
        for (int b : blocks) {
            if (b < 1) {
                throw new IllegalArgumentException("every tensor's grid has a block at least, got " + b);
            }
            cells += b;
        }
        long tableCell = cells;
        cells += 4L * count;
        if (cells > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("sums of squares: " + cells + " cells of partials and table");
        }
        this.scratch = memory.scratch(DType.I64, (int) cells);
        this.base = memory.addr(scratch, "sums of squares", 0, cells);
        this.desc = new long[4 * count];
        long p = base + 8L * count;
        for (int i = 0; i < count; i++) {
            desc[4 * i + 2] = blocks[i];
            desc[4 * i + 3] = p;
            p += 8L * blocks[i];
        }
        this.tableAddress = base + 8L * tableCell;
    }

    /** Device address of tensor i's {@code blocks[i]} partial sums (f64). */
    long partials(int i) {
        return desc[4 * i + 3];
    }

    /** Records tensor i's address, element count and element type for the kernels that read the table. */
    void describe(int i, long x, long n, boolean bf16) {
        desc[4 * i] = x;
        desc[4 * i + 1] = n;
        desc[4 * i + 2] = (desc[4 * i + 2] & 0xffffffffL) | (bf16 ? 1L << 32 : 0L);
    }

    /** The table {x, n, blocks, partial} per tensor on the device (uploaded on first call). */
    long table() {
        if (!uploaded) {
            try (LongPointer h = new LongPointer(desc)) {
                Cuda.check(cudart.cudaMemcpyAsync(RawPointer.of(tableAddress, 0), h, 8L * desc.length,
                        cudart.cudaMemcpyHostToDevice, device.stream()), "cudaMemcpyAsync(sum of squares table)");
            }
            uploaded = true;
        }
        return tableAddress;
    }

    /** Adds every tensor's partials in order and returns the sums (waits for the device). */
    double[] finish() {
        launcher.launch(KernelLauncher.ELEMENTWISE, "sum_partials_f64_multi", count, 1, 1024, 0, table(), base);
        double[] out = new double[count];
        try (DoublePointer d = new DoublePointer(Math.max(1, count))) {
            Cuda.check(cudart.cudaMemcpyAsync(d, RawPointer.of(base, 0), 8L * count,
                    cudart.cudaMemcpyDeviceToHost, device.stream()), "cudaMemcpyAsync(device -> host, sums of squares)");
            errors.syncAndCheck();
            d.get(out);
        }
        return out;
    }

    @Override
    public void close() {
        memory.release(scratch);
    }
}

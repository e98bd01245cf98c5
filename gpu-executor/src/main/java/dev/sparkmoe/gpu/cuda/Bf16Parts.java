package dev.sparkmoe.gpu.cuda;

import org.bytedeco.cuda.cudart.CUstream_st;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.BytePointer;
import org.bytedeco.javacpp.Pointer;
import org.bytedeco.javacpp.PointerPointer;

/**
 * Part-wise bf16 conversions on device addresses: {@code n[i]} f32 values at {@code src[i]} rounded (nearest even) to
 * bf16 at {@code dst[i]}, or bf16 widened to f32 (exactly), for every part i, in one launch per {@link #MAX} parts
 * ({@code f32_to_bf16_parts}, {@code bf16_to_f32_parts} in bf16_conversions.cu), whatever their sizes: a unit's parameters are
 * a handful of large tensors and many small ones, and a launch per part cost more host time than the large ones'
 * conversion. The parts travel by value as the kernel's only parameter (struct BfParts, 2320 bytes). Used by the bf16
 * wire of the NCCL all-gathers and by the widening of bf16 images. Called under the backend's lock.
 */
final class Bf16Parts {
    /** Parts per launch of the part-wise conversions (BFP_MAX in bf16_conversions.cu). */
    static final int MAX = 64;
    private static final long UNITS = 8, SRC = UNITS + 8L * (MAX + 1), DST = SRC + 8L * MAX, N = DST + 8L * MAX,
            VEC = N + 8L * MAX, BYTES = VEC + 4L * MAX;
    private final KernelLauncher launcher;
    private final BytePointer params = new BytePointer(BYTES); // struct BfParts (2320 bytes), by value
    private final PointerPointer<Pointer> argPtrs = new PointerPointer<>(1);

    Bf16Parts(KernelLauncher launcher) {
        this.launcher = launcher;
        argPtrs.put(0, params);
    }

    /** Rounds f32 parts to bf16 on stream {@code on} of this device. */
    void round(long[] src, long[] dst, long[] n, CUstream_st on) {
        launch(KernelLauncher.BF16_CONVERSIONS, "f32_to_bf16_parts", src, dst, n, on, true);
    }

    /** Widens bf16 parts to f32 on stream {@code on} of this device. */
    void widen(long[] src, long[] dst, long[] n, CUstream_st on) {
        launch(KernelLauncher.BF16_CONVERSIONS, "bf16_to_f32_parts", src, dst, n, on, false);
    }

    private void launch(String file, String kernel, long[] src, long[] dst, long[] n, CUstream_st on, boolean toBf16) {
        if (src.length != dst.length || src.length != n.length) {
            throw new IllegalArgumentException(kernel + ": " + src.length + " sources, " + dst.length
                    + " destinations and " + n.length + " lengths");
        }
        for (int start = 0; start < src.length; start += MAX) {
            int count = 0;
            long units = 0;
            for (int i = start; i < Math.min(src.length, start + MAX); i++) {
                if (n[i] <= 0) {
                    continue;
                }
                // vectors of four: the f32 side 16-byte aligned, the bf16 side 8-byte aligned
                boolean vec = toBf16 ? src[i] % 16 == 0 && dst[i] % 8 == 0 : src[i] % 8 == 0 && dst[i] % 16 == 0;
                long quads = vec ? n[i] >> 2 : 0;
                params.putLong(UNITS + 8L * count, units);
                params.putLong(SRC + 8L * count, src[i]);
                params.putLong(DST + 8L * count, dst[i]);
                params.putLong(N + 8L * count, n[i]);
                params.putInt(VEC + 4L * count, vec ? 1 : 0);
                units += quads + (n[i] - 4 * quads);
                count++;
            }
            if (count == 0) {
                continue;
            }
            params.putInt(0, count);
            params.putLong(UNITS + 8L * count, units);
            int st = cudart.cuLaunchKernel(launcher.function(file, kernel),
                    KernelLauncher.blocksFor(units, KernelLauncher.THREADS), 1, 1, KernelLauncher.THREADS, 1, 1, 0, on,
                    argPtrs, (PointerPointer<?>) null);
            if (st != 0) {
                Cuda.checkDriver(st, "cuLaunchKernel(" + kernel + ", " + count + " parts, " + units + " units)");
            }
        }
    }
}

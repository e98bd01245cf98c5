package dev.sparkmoe.parallel.checkpoint;

import dev.sparkmoe.core.tensor.Tensor;

/**
 * Blocks of a full tensor, as rank states record them: a region is {@code [dim][begin, end)} in the full tensor's
 * coordinates, and the tensor stored for it holds exactly that block, row-major.
 */
public final class Regions {
    private Regions() {
    }

    /**
     * Copies the part of {@code src} (the block {@code srcRegion}) that overlaps {@code dstRegion} into {@code dst}
     * (the block {@code dstRegion}); returns the number of elements copied (0 when the regions do not overlap).
     * Both are blocks of the same full tensor, f32.
     */
    public static long copyOverlap(Tensor src, int[][] srcRegion, Tensor dst, int[][] dstRegion) {
        int rank = srcRegion.length;
        if (dstRegion.length != rank) {
            throw new IllegalArgumentException("regions of different rank: " + rank + " and " + dstRegion.length);
        }
        int[] lo = new int[rank];
        int[] ext = new int[rank];
        for (int d = 0; d < rank; d++) {
            lo[d] = Math.max(srcRegion[d][0], dstRegion[d][0]);
            ext[d] = Math.min(srcRegion[d][1], dstRegion[d][1]) - lo[d];
            if (ext[d] <= 0) {
                return 0;
            }
        }
        int[] srcStride = strides(srcRegion);
        int[] dstStride = strides(dstRegion);
        float[] s = src.floats();
        float[] t = dst.floats();
        int len = rank == 0 ? 1 : ext[rank - 1];
        long runs = 1;
        for (int d = 0; d < rank - 1; d++) {
            runs *= ext[d];
        }
        int[] idx = new int[Math.max(0, rank - 1)];
        for (long r = 0; r < runs; r++) {
            long rem = r;
            for (int d = rank - 2; d >= 0; d--) {
                idx[d] = (int) (rem % ext[d]);
                rem /= ext[d];
            }
            int so = 0;
            int to = 0;
            for (int d = 0; d < rank; d++) {
                int at = lo[d] + (d < rank - 1 ? idx[d] : 0);
                so += (at - srcRegion[d][0]) * srcStride[d];
                to += (at - dstRegion[d][0]) * dstStride[d];
            }
            System.arraycopy(s, so, t, to, len);
        }
        return runs * len;
    }

    /** Elements in a region. */
    public static long size(int[][] region) {
        long n = 1;
        for (int[] r : region) {
            n *= Math.max(0, r[1] - r[0]);
        }
        return n;
    }

    /** The region a rank state's {@code region/NAME} tensor (I32 {@code [dims * 2]}) describes. */
    public static int[][] of(Tensor flat) {
        int[] f = flat.ints();
        int[][] out = new int[f.length / 2][];
        for (int d = 0; d < out.length; d++) {
            out[d] = new int[] {f[2 * d], f[2 * d + 1]};
        }
        return out;
    }

    private static int[] strides(int[][] region) {
        int[] st = new int[region.length];
        int s = 1;
        for (int d = region.length - 1; d >= 0; d--) {
            st[d] = s;
            s *= region[d][1] - region[d][0];
        }
        return st;
    }
}

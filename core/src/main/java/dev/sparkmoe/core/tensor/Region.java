package dev.sparkmoe.core.tensor;

import java.io.IOException;
import java.util.Arrays;

/**
 * A box of a tensor: {@code [begin, end)} along each dimension of a full shape (a rank's shard of a parameter). Its
 * elements are numbered in row-major order of the box, and any range of that numbering maps to runs of consecutive
 * elements of the full tensor's row-major layout: the reads a loader makes, the copies a gather makes.
 *
 * <p>Worked example: the box {@code [1, 3) x [0, 4)} of a [4, 4] tensor is one run (rows 1 and 2 are adjacent), 8
 * elements from flat index 4; the box {@code [0, 2) x [1, 3)} is two runs of 2, from 1 and from 5.
 */
public final class Region {
    private final int[] full;
    private final int[] begin;
    private final int[] end;
    private final int runDim;      // runs span this dim's extent and every (whole) dim after it
    private final long runLength;  // elements per run
    private final long[] stride;   // row-major strides of the full shape

    /** The box {@code box[d] = {begin, end}} of a tensor of shape {@code full}. */
    public Region(int[] full, int[][] box) {
        if (box.length != full.length) {
            throw new IllegalArgumentException("region " + describe(box) + " has " + box.length
                    + " dimensions but the tensor " + Arrays.toString(full) + " has " + full.length);
        }
        this.full = full.clone();
        begin = new int[full.length];
        end = new int[full.length];
        for (int d = 0; d < full.length; d++) {
            if (box[d].length != 2 || box[d][0] < 0 || box[d][0] > box[d][1] || box[d][1] > full[d]) {
                throw new IllegalArgumentException("region " + describe(box) + " does not fit the tensor "
                        + Arrays.toString(full) + " (dimension " + d + " must satisfy 0 <= begin <= end <= "
                        + full[d] + ")");
            }
            begin[d] = box[d][0];
            end[d] = box[d][1];
        }
        stride = new long[full.length];
        long s = 1;
        for (int d = full.length - 1; d >= 0; d--) {
            stride[d] = s;
            s *= full[d];
        }
        int j = full.length - 1;
        while (j > 0 && begin[j] == 0 && end[j] == full[j]) {
            j--;
        }
        runDim = Math.max(j, 0);
        runLength = full.length == 0 ? 1 : (end[runDim] - begin[runDim]) * stride[runDim];
    }

    /** The whole of a tensor of shape {@code full}. */
    public static Region whole(int... full) {
        int[][] box = new int[full.length][];
        for (int d = 0; d < full.length; d++) {
            box[d] = new int[] {0, full[d]};
        }
        return new Region(full, box);
    }

    /** The shape of the full tensor. */
    public int[] fullShape() {
        return full.clone();
    }

    /** The shape of the box. */
    public int[] shape() {
        int[] s = new int[full.length];
        for (int d = 0; d < s.length; d++) {
            s[d] = end[d] - begin[d];
        }
        return s;
    }

    public long numel() {
        return Tensor.numel(shape());
    }

    /** {@code [begin, end)} of each dimension. */
    public int[][] box() {
        int[][] b = new int[full.length][];
        for (int d = 0; d < b.length; d++) {
            b[d] = new int[] {begin[d], end[d]};
        }
        return b;
    }

    /** Receives one run: {@code length} consecutive elements from flat index {@code fullIndex} of the full tensor. */
    @FunctionalInterface
    public interface Run {
        /** {@code at} is the run's position relative to the start of the requested range. */
        void accept(long fullIndex, int at, int length) throws IOException;
    }

    /**
     * Calls {@code run} for the runs that cover elements {@code [from, from + count)} of this box's row-major
     * numbering, in order; together they cover the range exactly once.
     */
    public void forEachRun(long from, int count, Run run) throws IOException {
        long n = numel();
        if (from < 0 || count < 0 || from + count > n) {
            throw new IllegalArgumentException("elements [" + from + ", " + (from + count) + ") outside the region "
                    + describe(box()) + " of " + n + " elements");
        }
        if (count == 0) {
            return;
        }
        long row = from / runLength;
        long off = from % runLength;
        int done = 0;
        while (done < count) {
            long start = rowStart(row) + off;
            int len = (int) Math.min(runLength - off, count - done);
            run.accept(start, done, len);
            done += len;
            row++;
            off = 0;
        }
    }

    /** Flat index in the full tensor of the first element of run {@code row}. */
    private long rowStart(long row) {
        long at = full.length == 0 ? 0 : (long) begin[runDim] * stride[runDim];
        long r = row;
        for (int d = runDim - 1; d >= 0; d--) {
            int extent = end[d] - begin[d];
            at += (begin[d] + r % extent) * stride[d];
            r /= extent;
        }
        return at;
    }

    private static String describe(int[][] box) {
        StringBuilder sb = new StringBuilder();
        for (int[] b : box) {
            sb.append(sb.length() == 0 ? "" : " x ").append(Arrays.toString(b));
        }
        return sb.length() == 0 ? "[]" : sb.toString();
    }

    @Override
    public String toString() {
        return describe(box()) + " of " + Arrays.toString(full);
    }
}

package dev.sparkmoe.gpu.cuda;

import java.util.Random;

/**
 * The grouped GEMM problems that {@link KernelBench} times and {@code GroupedGemmKernelTest} checks: one grouped
 * problem laid out in three flat buffers, and the MoE layer's expert GEMMs over ragged rows per expert.
 */
public final class KernelBenchProblems {
    private KernelBenchProblems() {
    }

    /** A grouped problem laid out in three flat buffers (A, B and C, each group at its offset with its stride). */
    public record Problem(String name, boolean tA, boolean tB, int[] m, int[] n, int[] k, int[] aOff, int lda,
                          int aLen, int[] bOff, int ldb, int bLen, int[] cOff, int ldc, int cLen) {
        public int groups() {
            return m.length;
        }

        public double flops() {
            double f = 0;
            for (int g = 0; g < m.length; g++) {
                f += 2.0 * m[g] * n[g] * k[g];
            }
            return f;
        }
    }

    /**
     * The model's expert GEMMs over ragged {@code rows} per expert, laid out as the MoE layer does (token rows
     * contiguous, experts' weights stacked). kind: "NT" (forward, A = tokens [rows, k], B = weights [n, k]), "NN"
     * (data gradient, B = weights [k, n]), "TN" (weight gradient: m x n += tokens^T [m, rows] x grads [rows, n],
     * k = rows).
     */
    public static Problem model(String kind, int[] rows, int outer, int inner) {
        if (!kind.equals("NT") && !kind.equals("NN") && !kind.equals("TN")) {
            throw new IllegalArgumentException("kind " + kind + ": NT, NN or TN");
        }
        int e = rows.length;
        int[] m = new int[e], n = new int[e], k = new int[e];
        int[] aOff = new int[e], bOff = new int[e], cOff = new int[e];
        int start = 0;
        for (int g = 0; g < e; g++) {
            if (kind.equals("TN")) {
                m[g] = outer;
                n[g] = inner;
                k[g] = rows[g];
                aOff[g] = start * outer;
                bOff[g] = start * inner;
                cOff[g] = g * outer * inner;
            } else {
                m[g] = rows[g];
                n[g] = outer;
                k[g] = inner;
                aOff[g] = start * inner;
                bOff[g] = g * outer * inner;
                cOff[g] = start * outer;
            }
            start += rows[g];
        }
        int total = start;
        String name = kind + " m=" + (kind.equals("TN") ? outer : "rows") + " n=" + (kind.equals("TN") ? inner : outer)
                + " k=" + (kind.equals("TN") ? "rows" : inner);
        switch (kind) {
            case "NT":
                return new Problem(name, false, true, m, n, k, aOff, inner, total * inner, bOff, inner,
                        e * outer * inner, cOff, outer, total * outer);
            case "NN":
                return new Problem(name, false, false, m, n, k, aOff, inner, total * inner, bOff, outer,
                        e * outer * inner, cOff, outer, total * outer);
            default:
                return new Problem(name, true, false, m, n, k, aOff, outer, total * outer, bOff, inner,
                        total * inner, cOff, inner, e * outer * inner);
        }
    }

    /**
     * Qwen3-30B-A3B's routing at 8,192 tokens (C2): 128 ragged expert row counts summing to 65,536 (8 per token),
     * weights 0.4 + 1.2 * uniform, with expert 5 at 34 rows and expert 11 at 1,139 (the extremes a trained router gave
     * in the seventh session's profile).
     */
    public static int[] c2Rows(Random r) {
        int experts = 128, total = 65536, low = 34, high = 1139;
        double[] w = new double[experts];
        double sum = 0;
        for (int e = 0; e < experts; e++) {
            w[e] = e == 5 || e == 11 ? 0 : 0.4 + 1.2 * r.nextDouble();
            sum += w[e];
        }
        int rest = total - low - high, used = 0;
        int[] rows = new int[experts];
        for (int e = 0; e < experts; e++) {
            rows[e] = (int) Math.floor(w[e] / sum * rest);
            used += rows[e];
        }
        rows[0] += rest - used;
        rows[5] = low;
        rows[11] = high;
        return rows;
    }

    /** 32 ragged expert row counts summing to 32768, one of them 0 and one near 3000. */
    public static int[] modelRows(Random r) {
        int experts = 32, total = 32768;
        double[] w = new double[experts];
        double sum = 0;
        for (int e = 0; e < experts; e++) {
            w[e] = e == 5 ? 0 : e == 11 ? 3.0 : 0.4 + 1.2 * r.nextDouble();
            sum += w[e];
        }
        int[] rows = new int[experts];
        int used = 0;
        for (int e = 0; e < experts; e++) {
            rows[e] = (int) Math.floor(w[e] / sum * total);
            used += rows[e];
        }
        rows[0] += total - used;
        return rows;
    }
}

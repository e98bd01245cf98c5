package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * The CPU backend's mixture-of-experts kernels: the router's softmax, top-k choice, statistics and backward; the row
 * gathers and scatters that move tokens to and from their expert slots; the weighted combine of the slots (forward and
 * backward) and their plain sum.
 */
final class CpuMoeRouting {
    private CpuMoeRouting() {
    }

    static void softmaxRows(Tensor x, int rows, int cols, Tensor out) {
        float[] xf = x.floats();
        float[] of = out.floats();
        Par.range(rows, cols * 4L, (from, to) -> {
            for (int r = from; r < to; r++) {
                int o = r * cols;
                float max = Float.NEGATIVE_INFINITY;
                for (int j = 0; j < cols; j++) {
                    max = Math.max(max, xf[o + j]);
                }
                float sum = 0f;
                for (int j = 0; j < cols; j++) {
                    float e = (float) Math.exp(xf[o + j] - max);
                    of[o + j] = e;
                    sum += e;
                }
                float inv = 1f / sum;
                for (int j = 0; j < cols; j++) {
                    of[o + j] *= inv;
                }
            }
        });
    }

    static void routerTopK(Tensor probs, int rows, int experts, int k, boolean normalize, Tensor topIdx,
                           Tensor topVal, Tensor weights) {
        float[] p = probs.floats();
        int[] idx = topIdx.ints();
        float[] val = topVal.floats();
        float[] w = weights.floats();
        Par.range(rows, (long) experts * k, (from, to) -> {
            for (int r = from; r < to; r++) {
                int o = r * experts;
                for (int j = 0; j < k; j++) {
                    int best = -1;
                    float bv = Float.NEGATIVE_INFINITY;
                    for (int e = 0; e < experts; e++) {
                        boolean taken = false;
                        for (int q = 0; q < j; q++) {
                            if (idx[r * k + q] == e) {
                                taken = true;
                                break;
                            }
                        }
                        if (!taken && (best < 0 || p[o + e] > bv)) {
                            best = e;
                            bv = p[o + e];
                        }
                    }
                    idx[r * k + j] = best;
                    val[r * k + j] = bv;
                }
                float sum = 0f;
                for (int j = 0; j < k; j++) {
                    sum += val[r * k + j];
                }
                for (int j = 0; j < k; j++) {
                    w[r * k + j] = normalize ? val[r * k + j] / sum : val[r * k + j];
                }
            }
        });
    }

    static void routerStats(Tensor topIdx, Tensor probs, int rows, int experts, int k, double[] stats) {
        int[] idx = topIdx.ints();
        float[] p = probs.floats();
        for (int i = 0; i < rows * k; i++) {
            stats[idx[i]] += 1;
        }
        for (int r = 0; r < rows; r++) {
            for (int e = 0; e < experts; e++) {
                stats[experts + e] += p[r * experts + e];
            }
        }
    }

    static void routerBackward(Tensor dWeights, Tensor topIdx, Tensor topVal, Tensor probs, Tensor auxGrad,
                               int rows, int experts, int k, boolean normalize, Tensor dLogits) {
        float[] dw = dWeights.floats();
        int[] idx = topIdx.ints();
        float[] val = topVal.floats();
        float[] p = probs.floats();
        float[] aux = auxGrad.floats();
        float[] dl = dLogits.floats();
        Par.range(rows, (long) experts * 4, (from, to) -> {
            float[] dp = new float[experts];
            for (int n = from; n < to; n++) {
                System.arraycopy(aux, 0, dp, 0, experts);
                if (normalize) {
                    // w_j = v_j / S: dv_j = dw_j / S - sum_i dw_i v_i / S^2
                    float sum = 0f;
                    float dotWv = 0f;
                    for (int j = 0; j < k; j++) {
                        sum += val[n * k + j];
                        dotWv += dw[n * k + j] * val[n * k + j];
                    }
                    for (int j = 0; j < k; j++) {
                        dp[idx[n * k + j]] += dw[n * k + j] / sum - dotWv / (sum * sum);
                    }
                } else {
                    for (int j = 0; j < k; j++) {
                        dp[idx[n * k + j]] += dw[n * k + j];
                    }
                }
                float dotP = 0f;
                for (int e = 0; e < experts; e++) {
                    dotP += dp[e] * p[n * experts + e];
                }
                for (int e = 0; e < experts; e++) {
                    dl[n * experts + e] = p[n * experts + e] * (dp[e] - dotP);
                }
            }
        });
    }

    static void gatherRows(Tensor src, Tensor index, int n, int width, int divisor, Tensor dst) {
        float[] sf = src.floats();
        float[] df = dst.floats();
        int[] idx = index.ints();
        Par.range(n, width, (from, to) -> {
            for (int j = from; j < to; j++) {
                System.arraycopy(sf, (idx[j] / divisor) * width, df, j * width, width);
            }
        });
    }

    static void scatterRows(Tensor src, Tensor index, int n, int width, Tensor dst) {
        float[] sf = src.floats();
        float[] df = dst.floats();
        int[] idx = index.ints();
        Par.range(n, width, (from, to) -> {
            for (int j = from; j < to; j++) {
                System.arraycopy(sf, j * width, df, idx[j] * width, width);
            }
        });
    }

    static void invertIndex(Tensor index, int n, Tensor inverse) {
        int[] idx = index.ints();
        int[] inv = inverse.ints();
        for (int j = 0; j < n; j++) {
            int s = idx[j];
            if (s < 0 || s >= n) {
                throw new IllegalArgumentException("invertIndex: index[" + j + "] = " + s + " is not in [0, " + n
                        + "): not a permutation");
            }
            inv[s] = j;
        }
    }

    /** Row of slot s: rowOfSlot[s], or s without an index. */
    private static int row(int[] rowOfSlot, int s) {
        return rowOfSlot == null ? s : rowOfSlot[s];
    }

    static void moeCombine(Tensor rows, Tensor rowOfSlot, Tensor weights, int tokens, int k, int width, Tensor y) {
        float[] sf = rows.floats();
        int[] r = rowOfSlot == null ? null : rowOfSlot.ints();
        float[] w = weights.floats();
        float[] yf = y.floats();
        Par.range(tokens, (long) k * width, (from, to) -> {
            for (int t = from; t < to; t++) {
                for (int j = 0; j < width; j++) {
                    yf[t * width + j] = 0f;
                }
                for (int q = 0; q < k; q++) {
                    float wq = w[t * k + q];
                    int so = row(r, t * k + q) * width;
                    for (int j = 0; j < width; j++) {
                        yf[t * width + j] += wq * sf[so + j];
                    }
                }
            }
        });
    }

    static void moeCombineBackward(Tensor dy, Tensor rows, Tensor rowOfSlot, Tensor weights, int tokens, int k,
                                   int width, Tensor dRows, Tensor dWeights) {
        float[] dyf = dy.floats();
        float[] sf = rows.floats();
        int[] r = rowOfSlot == null ? null : rowOfSlot.ints();
        float[] w = weights.floats();
        float[] dsf = dRows.floats();
        DType dt = dRows.dtype();
        float[] dwf = dWeights.floats();
        Par.range(tokens, (long) k * width * 2, (from, to) -> {
            for (int t = from; t < to; t++) {
                for (int q = 0; q < k; q++) {
                    int s = t * k + q;
                    int ro = row(r, s) * width;
                    float dot = 0f;
                    for (int j = 0; j < width; j++) {
                        dsf[ro + j] = DType.round(dt, w[s] * dyf[t * width + j]);
                        dot += dyf[t * width + j] * sf[ro + j];
                    }
                    dwf[s] = dot;
                }
            }
        });
    }

    static void sumSlots(Tensor src, Tensor rowOfSlot, int tokens, int k, int width, Tensor dst) {
        float[] sf = src.floats();
        int[] r = rowOfSlot == null ? null : rowOfSlot.ints();
        float[] df = dst.floats();
        Par.range(tokens, (long) k * width, (from, to) -> {
            for (int t = from; t < to; t++) {
                for (int q = 0; q < k; q++) {
                    int so = row(r, t * k + q) * width;
                    for (int j = 0; j < width; j++) {
                        df[t * width + j] += sf[so + j];
                    }
                }
            }
        });
    }
}

package dev.sparkmoe.core.backend;

/**
 * Straightforward double-precision references of the forward kernels, written from the formulas (transformers'
 * Qwen3-MoE modeling code and torch's documentation), independent of CpuBackend's loops.
 */
final class Refs {
    private Refs() {
    }

    static double[] rmsNorm(double[] x, double[] w, double eps, int rows, int dim, double[] rstdOut) {
        double[] y = new double[rows * dim];
        for (int r = 0; r < rows; r++) {
            double ss = 0;
            for (int j = 0; j < dim; j++) {
                ss += x[r * dim + j] * x[r * dim + j];
            }
            double rs = 1 / Math.sqrt(ss / dim + eps);
            if (rstdOut != null) {
                rstdOut[r] = rs;
            }
            for (int j = 0; j < dim; j++) {
                y[r * dim + j] = w[j] * x[r * dim + j] * rs;
            }
        }
        return y;
    }

    /**
     * transformers' apply_rotary_pos_emb: x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1),
     * cos/sin = cat(freqs, freqs) with freqs = pos * inv_freq, inv_freq[i] = 1 / theta^(2i / D).
     */
    static double[] rope(double[] x, int tokens, int heads, int d, int seqLen, double theta) {
        double[] out = new double[x.length];
        int half = d / 2;
        for (int n = 0; n < tokens; n++) {
            int pos = n % seqLen;
            for (int h = 0; h < heads; h++) {
                int o = (n * heads + h) * d;
                for (int j = 0; j < d; j++) {
                    int i = j % half;
                    double freq = pos * (1.0 / Math.pow(theta, 2.0 * i / d));
                    double rot = j < half ? -x[o + j + half] : x[o + j - half];
                    out[o + j] = x[o + j] * Math.cos(freq) + rot * Math.sin(freq);
                }
            }
        }
        return out;
    }

    /** Causal GQA attention; query head h reads kv head h / (Hq / Hkv). probsOut [B, Hq, T, T] may be null. */
    static double[] attention(double[] q, double[] k, double[] v, int batch, int t, int hq, int hkv, int d,
                              double scale, double[] probsOut) {
        double[] out = new double[batch * t * hq * d];
        int group = hq / hkv;
        for (int b = 0; b < batch; b++) {
            for (int h = 0; h < hq; h++) {
                int g = h / group;
                for (int i = 0; i < t; i++) {
                    double[] s = new double[t];
                    double max = Double.NEGATIVE_INFINITY;
                    for (int j = 0; j < t; j++) {
                        if (j > i) {
                            s[j] = Double.NEGATIVE_INFINITY;
                            continue;
                        }
                        double dot = 0;
                        for (int x = 0; x < d; x++) {
                            dot += q[((b * t + i) * hq + h) * d + x] * k[((b * t + j) * hkv + g) * d + x];
                        }
                        s[j] = dot * scale;
                        max = Math.max(max, s[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j < t; j++) {
                        s[j] = j > i ? 0 : Math.exp(s[j] - max);
                        sum += s[j];
                    }
                    for (int j = 0; j < t; j++) {
                        double p = s[j] / sum;
                        if (probsOut != null) {
                            probsOut[((b * hq + h) * t + i) * t + j] = p;
                        }
                        for (int x = 0; x < d; x++) {
                            out[((b * t + i) * hq + h) * d + x] += p * v[((b * t + j) * hkv + g) * d + x];
                        }
                    }
                }
            }
        }
        return out;
    }

    static double[] softmaxRows(double[] x, int rows, int cols) {
        double[] out = new double[x.length];
        for (int r = 0; r < rows; r++) {
            double max = Double.NEGATIVE_INFINITY;
            for (int j = 0; j < cols; j++) {
                max = Math.max(max, x[r * cols + j]);
            }
            double sum = 0;
            for (int j = 0; j < cols; j++) {
                sum += Math.exp(x[r * cols + j] - max);
            }
            for (int j = 0; j < cols; j++) {
                out[r * cols + j] = Math.exp(x[r * cols + j] - max) / sum;
            }
        }
        return out;
    }

    /** Summed cross-entropy over rows whose target is not -100. */
    static double crossEntropySum(double[] logits, int[] targets, int rows, int vocab) {
        double total = 0;
        for (int r = 0; r < rows; r++) {
            if (targets[r] == -100) {
                continue;
            }
            double max = Double.NEGATIVE_INFINITY;
            for (int j = 0; j < vocab; j++) {
                max = Math.max(max, logits[r * vocab + j]);
            }
            double sum = 0;
            for (int j = 0; j < vocab; j++) {
                sum += Math.exp(logits[r * vocab + j] - max);
            }
            total += Math.log(sum) + max - logits[r * vocab + targets[r]];
        }
        return total;
    }

    static double[] siluMul(double[] g, double[] u) {
        double[] out = new double[g.length];
        for (int i = 0; i < g.length; i++) {
            out[i] = g[i] / (1 + Math.exp(-g[i])) * u[i];
        }
        return out;
    }

    static double[] embedding(double[] table, int[] ids, int hidden) {
        double[] out = new double[ids.length * hidden];
        for (int n = 0; n < ids.length; n++) {
            System.arraycopy(table, ids[n] * hidden, out, n * hidden, hidden);
        }
        return out;
    }

    static double dot(double[] a, double[] b) {
        double s = 0;
        for (int i = 0; i < a.length; i++) {
            s += a[i] * b[i];
        }
        return s;
    }
}

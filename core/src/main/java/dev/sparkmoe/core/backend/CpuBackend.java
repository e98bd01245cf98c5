package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.tensor.Tensor;
import java.nio.FloatBuffer;
import java.util.logging.Logger;
import org.bytedeco.openblas.global.openblas_nolapack;

/**
 * The reference backend: f32 on the JVM heap. GEMMs go to OpenBLAS (through JavaCPP); element-wise, reduction,
 * attention and optimizer kernels are plain Java spread over the cores with {@link Par}. Results do not depend on
 * the thread count: every output element is computed by exactly one thread in a fixed order.
 */
public final class CpuBackend implements Backend {
    private static final Logger LOG = Logger.getLogger(CpuBackend.class.getName());
    private static volatile boolean blasReady;

    public CpuBackend() {
        initBlas();
    }

    private static synchronized void initBlas() {
        if (!blasReady) {
            String threads = System.getProperty("sparkmoe.blas.threads", System.getenv("SPARKMOE_BLAS_THREADS"));
            if (threads != null) {
                org.bytedeco.openblas.presets.openblas_nolapack.blas_set_num_threads(Integer.parseInt(threads.trim()));
            }
            LOG.fine(() -> "OpenBLAS ready, threads=" + org.bytedeco.openblas.presets.openblas_nolapack.blas_get_num_threads());
            blasReady = true;
        }
    }

    @Override
    public String name() {
        return "cpu";
    }

    @Override
    public void gemm(boolean transA, boolean transB, int m, int n, int k, float alpha, Tensor a, int aOff, int lda,
                     Tensor b, int bOff, int ldb, float beta, Tensor c, int cOff, int ldc) {
        if (m == 0 || n == 0) {
            return;
        }
        float[] af = a.floats();
        float[] bf = b.floats();
        float[] cf = c.floats();
        if (k == 0) {
            scaleRange(cf, cOff, m, n, ldc, beta);
            return;
        }
        // Bounds are checked here so that a wrong shape is a Java exception, never a native crash.
        checkSpan("A", af.length, aOff, transA ? k : m, transA ? m : k, lda);
        checkSpan("B", bf.length, bOff, transB ? n : k, transB ? k : n, ldb);
        checkSpan("C", cf.length, cOff, m, n, ldc);
        openblas_nolapack.cblas_sgemm(openblas_nolapack.CblasRowMajor,
                transA ? openblas_nolapack.CblasTrans : openblas_nolapack.CblasNoTrans,
                transB ? openblas_nolapack.CblasTrans : openblas_nolapack.CblasNoTrans,
                m, n, k, alpha, FloatBuffer.wrap(af, aOff, af.length - aOff), lda,
                FloatBuffer.wrap(bf, bOff, bf.length - bOff), ldb, beta,
                FloatBuffer.wrap(cf, cOff, cf.length - cOff), ldc);
    }

    private static void scaleRange(float[] c, int off, int m, int n, int ldc, float beta) {
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                c[off + i * ldc + j] = beta == 0f ? 0f : c[off + i * ldc + j] * beta;
            }
        }
    }

    private static void checkSpan(String what, int length, int off, int rows, int cols, int ld) {
        if (ld < cols) {
            throw new IllegalArgumentException("gemm: leading dimension of " + what + " (" + ld
                    + ") is smaller than its row length (" + cols + ")");
        }
        long last = (long) off + (long) (rows - 1) * ld + cols;
        if (off < 0 || last > length) {
            throw new IndexOutOfBoundsException("gemm: " + what + " [" + rows + " x " + cols + "] at offset " + off
                    + " with stride " + ld + " needs " + last + " elements but the buffer has " + length);
        }
    }

    @Override
    public void rmsNormForward(Tensor x, Tensor w, float eps, int rows, int dim, Tensor y, Tensor rstd) {
        float[] xf = x.floats();
        float[] wf = w.floats();
        float[] yf = y.floats();
        float[] rf = rstd.floats();
        Par.range(rows, dim * 3L, (from, to) -> {
            for (int r = from; r < to; r++) {
                int o = r * dim;
                float ss = 0f;
                for (int j = 0; j < dim; j++) {
                    ss += xf[o + j] * xf[o + j];
                }
                float rs = (float) (1.0 / Math.sqrt(ss / dim + eps));
                rf[r] = rs;
                for (int j = 0; j < dim; j++) {
                    yf[o + j] = wf[j] * (xf[o + j] * rs);
                }
            }
        });
    }

    @Override
    public void rmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, int rows, int dim, Tensor dx, Tensor dw) {
        float[] dyf = dy.floats();
        float[] xf = x.floats();
        float[] wf = w.floats();
        float[] rf = rstd.floats();
        float[] dxf = dx.floats();
        Par.range(rows, dim * 4L, (from, to) -> {
            for (int r = from; r < to; r++) {
                int o = r * dim;
                float rs = rf[r];
                float dot = 0f;
                for (int j = 0; j < dim; j++) {
                    dot += dyf[o + j] * wf[j] * xf[o + j] * rs;
                }
                float mean = dot / dim;
                for (int j = 0; j < dim; j++) {
                    float xhat = xf[o + j] * rs;
                    dxf[o + j] = rs * (dyf[o + j] * wf[j] - xhat * mean);
                }
            }
        });
        // Weight gradient: reduce over rows, split by columns so each thread owns its outputs.
        float[] dwf = dw.floats();
        Par.range(dim, rows * 2L, (from, to) -> {
            for (int j = from; j < to; j++) {
                float acc = 0f;
                for (int r = 0; r < rows; r++) {
                    acc += dyf[r * dim + j] * (xf[r * dim + j] * rf[r]);
                }
                dwf[j] += acc;
            }
        });
    }

    @Override
    public void rope(Tensor x, int tokens, int heads, int headDim, int seqLen, float theta, boolean inverse) {
        float[] xf = x.floats();
        int half = headDim / 2;
        float[] invFreq = new float[half];
        for (int i = 0; i < half; i++) {
            // As transformers: 1 / theta ** (arange(0, D, 2) / D), in f32.
            invFreq[i] = 1f / (float) Math.pow(theta, (float) (2 * i) / headDim);
        }
        float sign = inverse ? -1f : 1f;
        Par.range(tokens, (long) heads * headDim * 4, (from, to) -> {
            float[] cos = new float[half];
            float[] sin = new float[half];
            for (int n = from; n < to; n++) {
                int pos = n % seqLen;
                for (int i = 0; i < half; i++) {
                    float angle = pos * invFreq[i];
                    cos[i] = (float) Math.cos(angle);
                    sin[i] = sign * (float) Math.sin(angle);
                }
                for (int h = 0; h < heads; h++) {
                    int o = (n * heads + h) * headDim;
                    for (int i = 0; i < half; i++) {
                        float a = xf[o + i];
                        float b = xf[o + i + half];
                        xf[o + i] = a * cos[i] - b * sin[i];
                        xf[o + i + half] = b * cos[i] + a * sin[i];
                    }
                }
            }
        });
    }

    @Override
    public void attentionForward(Tensor q, Tensor k, Tensor v, int batch, int seqLen, int qHeads, int kvHeads,
                                 int headDim, float scale, Tensor out, Tensor probs) {
        float[] qf = q.floats();
        float[] kf = k.floats();
        float[] vf = v.floats();
        float[] of = out.floats();
        float[] pf = probs.floats();
        int group = qHeads / kvHeads;
        int qStride = qHeads * headDim;
        int kvStride = kvHeads * headDim;
        Par.range(batch * qHeads, (long) seqLen * seqLen * headDim, (from, to) -> {
            for (int bh = from; bh < to; bh++) {
                int b = bh / qHeads;
                int h = bh % qHeads;
                int g = h / group;
                int pBase = bh * seqLen * seqLen;
                for (int i = 0; i < seqLen; i++) {
                    int qo = (b * seqLen + i) * qStride + h * headDim;
                    int prow = pBase + i * seqLen;
                    float max = Float.NEGATIVE_INFINITY;
                    for (int j = 0; j <= i; j++) {
                        int ko = (b * seqLen + j) * kvStride + g * headDim;
                        float s = 0f;
                        for (int d = 0; d < headDim; d++) {
                            s += qf[qo + d] * kf[ko + d];
                        }
                        s *= scale;
                        pf[prow + j] = s;
                        max = Math.max(max, s);
                    }
                    float sum = 0f;
                    for (int j = 0; j <= i; j++) {
                        float e = (float) Math.exp(pf[prow + j] - max);
                        pf[prow + j] = e;
                        sum += e;
                    }
                    float inv = 1f / sum;
                    for (int j = 0; j <= i; j++) {
                        pf[prow + j] *= inv;
                    }
                    for (int j = i + 1; j < seqLen; j++) {
                        pf[prow + j] = 0f;
                    }
                    int oo = (b * seqLen + i) * qStride + h * headDim;
                    for (int d = 0; d < headDim; d++) {
                        of[oo + d] = 0f;
                    }
                    for (int j = 0; j <= i; j++) {
                        float p = pf[prow + j];
                        int vo = (b * seqLen + j) * kvStride + g * headDim;
                        for (int d = 0; d < headDim; d++) {
                            of[oo + d] += p * vf[vo + d];
                        }
                    }
                }
            }
        });
    }

    @Override
    public void attentionBackward(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor probs, int batch, int seqLen,
                                  int qHeads, int kvHeads, int headDim, float scale, Tensor dq, Tensor dk, Tensor dv) {
        float[] dof = dOut.floats();
        float[] qf = q.floats();
        float[] kf = k.floats();
        float[] vf = v.floats();
        float[] pf = probs.floats();
        float[] dqf = dq.floats();
        float[] dkf = dk.floats();
        float[] dvf = dv.floats();
        int group = qHeads / kvHeads;
        int qStride = qHeads * headDim;
        int kvStride = kvHeads * headDim;
        // Parallel over (batch, kv head): each task owns the dk/dv rows of its kv head and the dq rows of the
        // query heads in its group, so no two tasks write the same element.
        Par.range(batch * kvHeads, (long) group * seqLen * seqLen * headDim * 3, (from, to) -> {
            float[] dp = new float[seqLen];
            for (int bg = from; bg < to; bg++) {
                int b = bg / kvHeads;
                int g = bg % kvHeads;
                for (int j = 0; j < seqLen; j++) {
                    int ko = (b * seqLen + j) * kvStride + g * headDim;
                    for (int d = 0; d < headDim; d++) {
                        dkf[ko + d] = 0f;
                        dvf[ko + d] = 0f;
                    }
                }
                for (int h = g * group; h < (g + 1) * group; h++) {
                    int pBase = (b * qHeads + h) * seqLen * seqLen;
                    for (int i = 0; i < seqLen; i++) {
                        int qo = (b * seqLen + i) * qStride + h * headDim;
                        int prow = pBase + i * seqLen;
                        float rowDot = 0f;
                        for (int j = 0; j <= i; j++) {
                            int vo = (b * seqLen + j) * kvStride + g * headDim;
                            float s = 0f;
                            for (int d = 0; d < headDim; d++) {
                                s += dof[qo + d] * vf[vo + d];
                            }
                            dp[j] = s;
                            rowDot += s * pf[prow + j];
                        }
                        for (int d = 0; d < headDim; d++) {
                            dqf[qo + d] = 0f;
                        }
                        for (int j = 0; j <= i; j++) {
                            float p = pf[prow + j];
                            float ds = p * (dp[j] - rowDot) * scale;
                            int ko = (b * seqLen + j) * kvStride + g * headDim;
                            for (int d = 0; d < headDim; d++) {
                                dqf[qo + d] += ds * kf[ko + d];
                                dkf[ko + d] += ds * qf[qo + d];
                                dvf[ko + d] += p * dof[qo + d];
                            }
                        }
                    }
                }
            }
        });
    }

    private static float sigmoid(float x) {
        return (float) (1.0 / (1.0 + Math.exp(-x)));
    }

    @Override
    public void siluMulForward(Tensor gate, Tensor up, Tensor out, int off, int n) {
        float[] gf = gate.floats();
        float[] uf = up.floats();
        float[] of = out.floats();
        Par.range(n, 20, (from, to) -> {
            for (int i = off + from; i < off + to; i++) {
                float g = gf[i];
                of[i] = g * sigmoid(g) * uf[i];
            }
        });
    }

    @Override
    public void siluMulBackward(Tensor dOut, Tensor gate, Tensor up, Tensor dGate, Tensor dUp, int off, int n) {
        float[] df = dOut.floats();
        float[] gf = gate.floats();
        float[] uf = up.floats();
        float[] dgf = dGate.floats();
        float[] duf = dUp.floats();
        Par.range(n, 25, (from, to) -> {
            for (int i = off + from; i < off + to; i++) {
                float g = gf[i];
                float s = sigmoid(g);
                float silu = g * s;
                duf[i] = df[i] * silu;
                dgf[i] = df[i] * uf[i] * (s * (1f + g * (1f - s)));
            }
        });
    }

    @Override
    public void softmaxRows(Tensor x, int rows, int cols, Tensor out) {
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

    @Override
    public double crossEntropy(Tensor logits, int[] targets, int rows, int vocab, float gradScale, Tensor dLogits) {
        float[] lf = logits.floats();
        float[] df = dLogits.floats();
        double[] rowLoss = new double[rows];
        Par.range(rows, vocab * 4L, (from, to) -> {
            for (int r = from; r < to; r++) {
                int o = r * vocab;
                int t = targets[r];
                if (t == -100) {
                    for (int j = 0; j < vocab; j++) {
                        df[o + j] = 0f;
                    }
                    continue;
                }
                if (t < 0 || t >= vocab) {
                    throw new IllegalArgumentException("target id " + t + " at row " + r
                            + " is outside the vocabulary [0, " + vocab + ") (use -100 to ignore a position)");
                }
                float max = Float.NEGATIVE_INFINITY;
                for (int j = 0; j < vocab; j++) {
                    max = Math.max(max, lf[o + j]);
                }
                double sum = 0;
                for (int j = 0; j < vocab; j++) {
                    sum += Math.exp(lf[o + j] - max);
                }
                double logSum = Math.log(sum);
                rowLoss[r] = logSum - (lf[o + t] - max);
                for (int j = 0; j < vocab; j++) {
                    df[o + j] = (float) (Math.exp(lf[o + j] - max - logSum)) * gradScale;
                }
                df[o + t] -= gradScale;
            }
        });
        double total = 0;
        for (double l : rowLoss) {
            total += l;
        }
        return total;
    }

    @Override
    public void embeddingForward(Tensor table, int[] ids, int hidden, Tensor out) {
        float[] tf = table.floats();
        float[] of = out.floats();
        int rows = table.numel() / hidden;
        for (int n = 0; n < ids.length; n++) {
            if (ids[n] < 0 || ids[n] >= rows) {
                throw new IllegalArgumentException("token id " + ids[n] + " at position " + n
                        + " is outside the vocabulary [0, " + rows + ")");
            }
            System.arraycopy(tf, ids[n] * hidden, of, n * hidden, hidden);
        }
    }

    @Override
    public void embeddingBackward(Tensor dOut, int[] ids, int hidden, Tensor dTable) {
        float[] df = dOut.floats();
        float[] tf = dTable.floats();
        for (int n = 0; n < ids.length; n++) {
            int o = ids[n] * hidden;
            int s = n * hidden;
            for (int j = 0; j < hidden; j++) {
                tf[o + j] += df[s + j];
            }
        }
    }

    @Override
    public void axpy(float alpha, Tensor x, int xOff, Tensor y, int yOff, int n) {
        float[] xf = x.floats();
        float[] yf = y.floats();
        Par.range(n, 2, (from, to) -> {
            for (int i = from; i < to; i++) {
                yf[yOff + i] += alpha * xf[xOff + i];
            }
        });
    }

    @Override
    public void scale(Tensor x, float alpha) {
        float[] xf = x.floats();
        Par.range(xf.length, 1, (from, to) -> {
            for (int i = from; i < to; i++) {
                xf[i] *= alpha;
            }
        });
    }

    @Override
    public double sumSquares(Tensor x) {
        float[] xf = x.floats();
        // Fixed blocks summed in order: the result does not depend on the thread count.
        int block = 4096;
        int blocks = (xf.length + block - 1) / block;
        double[] partial = new double[blocks];
        Par.range(blocks, block, (from, to) -> {
            for (int bIdx = from; bIdx < to; bIdx++) {
                double s = 0;
                int end = Math.min(xf.length, (bIdx + 1) * block);
                for (int i = bIdx * block; i < end; i++) {
                    s += (double) xf[i] * xf[i];
                }
                partial[bIdx] = s;
            }
        });
        double total = 0;
        for (double p : partial) {
            total += p;
        }
        return total;
    }

    @Override
    public void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, int n, float lr, float beta1, float beta2,
                      float eps, float weightDecay, long step) {
        float[] pf = param.floats();
        float[] gf = grad.floats();
        float[] mf = m.floats();
        float[] vf = v.floats();
        float decay = (float) (1.0 - (double) lr * weightDecay);
        float w1 = 1f - beta1;
        float w2 = 1f - beta2;
        double bc1 = 1.0 - Math.pow(beta1, step);
        double bc2 = 1.0 - Math.pow(beta2, step);
        float stepSize = (float) (lr / bc1);
        float bc2Sqrt = (float) Math.sqrt(bc2);
        Par.range(n, 12, (from, to) -> {
            for (int i = from; i < to; i++) {
                float p = weightDecay != 0f ? pf[i] * decay : pf[i];
                float g = gf[i];
                float mi = mf[i];
                // torch lerp with weight < 0.5: self + weight * (end - self)
                mi = w1 < 0.5f ? mi + w1 * (g - mi) : g - (g - mi) * (1f - w1);
                float vi = vf[i] * beta2 + w2 * g * g;
                mf[i] = mi;
                vf[i] = vi;
                float denom = (float) Math.sqrt(vi) / bc2Sqrt + eps;
                pf[i] = p + (-stepSize) * (mi / denom);
            }
        });
    }
}

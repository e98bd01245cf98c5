package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.optim.AdamW;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.javacpp.FloatPointer;
import java.util.logging.Logger;
import org.bytedeco.openblas.global.openblas_nolapack;

/**
 * The reference backend: f32 on the JVM heap. GEMMs go to OpenBLAS (through JavaCPP); element-wise, reduction,
 * attention and optimizer kernels are plain Java spread over the cores with {@link Par}. Results do not depend on
 * the thread count: every output element is computed by exactly one thread in a fixed order.
 */
public final class CpuBackend implements Backend {
    private static final Logger LOG = Logger.getLogger(CpuBackend.class.getName());
    /** The OpenBLAS thread count this process set, 0 before the first backend. */
    private static int blasThreadsSet;

    /**
     * A backend whose matrix products use the OpenBLAS thread count set by the last {@link #CpuBackend(int)} of this
     * process, or one thread if none was made.
     */
    public CpuBackend() {
        initBlas(0);
    }

    /**
     * A backend whose matrix products run on {@code blasThreads} OpenBLAS threads. The count is process-wide
     * (OpenBLAS has one pool): it holds for every CPU backend of the JVM until another sets it. One thread suits
     * several ranks in one JVM (Spark {@code local[N]}): the cores are already busy with the kernels' own parallel
     * loops, and BLAS threads on top of them slow a step down; more suit one rank on a many-core host.
     */
    public CpuBackend(int blasThreads) {
        if (blasThreads < 1) {
            throw new IllegalArgumentException("OpenBLAS threads (" + blasThreads + ") must be at least 1 "
                    + "(training.cpu_blas_threads)");
        }
        initBlas(blasThreads);
    }

    /** Sets the process's OpenBLAS threads to {@code threads} (0: to 1 unless already set). */
    private static synchronized void initBlas(int threads) {
        int n = threads > 0 ? threads : blasThreadsSet > 0 ? blasThreadsSet : 1;
        if (n != blasThreadsSet) {
            org.bytedeco.openblas.presets.openblas_nolapack.blas_set_num_threads(n);
            blasThreadsSet = n;
            LOG.fine(() -> "OpenBLAS threads: " + blasThreads());
        }
    }

    /** The OpenBLAS threads the process's matrix products use (as OpenBLAS reports them). */
    public static int blasThreads() {
        return org.bytedeco.openblas.presets.openblas_nolapack.blas_get_num_threads();
    }

    @Override
    public String name() {
        return "cpu";
    }

    // ------------------------------------------------------------------ memory

    private static final Scope NO_SCOPE = () -> { };

    @Override
    public Tensor zeros(DType dtype, int... shape) {
        return Tensor.zeros(dtype, shape);
    }

    @Override
    public Tensor upload(Tensor host) {
        if (!host.isHost()) {
            throw new IllegalArgumentException("the CPU backend cannot read " + host + ": download it through the "
                    + "backend that owns it first");
        }
        return host;
    }

    @Override
    public Tensor download(Tensor t) {
        return upload(t);
    }

    @Override
    public void copy(Tensor src, int srcOff, Tensor dst, int dstOff, int n) {
        if (src.dtype() != dst.dtype()) {
            throw new IllegalArgumentException("copy from " + src + " to " + dst + ": dtypes differ");
        }
        switch (src.dtype()) {
            case I32: System.arraycopy(src.ints(), srcOff, dst.ints(), dstOff, n); break;
            case I64: System.arraycopy(src.longs(), srcOff, dst.longs(), dstOff, n); break;
            default: System.arraycopy(src.floats(), srcOff, dst.floats(), dstOff, n);
        }
    }

    @Override
    public void convert(Tensor src, Tensor dst) {
        if (!src.dtype().isFloating() || !dst.dtype().isFloating() || src.numel() != dst.numel()) {
            throw new IllegalArgumentException("convert from " + src + " to " + dst + ": both must be floating "
                    + "(F32, BF16, F16) with the same number of elements");
        }
        float[] s = src.floats();
        float[] d = dst.floats();
        Par.range(s.length, 4, (from, to) -> {
            for (int i = from; i < to; i++) {
                d[i] = DType.round(dst.dtype(), s[i]);
            }
        });
    }

    @Override
    public void copyRows(Tensor src, int srcOff, int srcStride, Tensor dst, int dstOff, int dstStride, int rows,
                         int rowLen) {
        if (rowLen == 0) {
            return;
        }
        for (int r = 0; r < rows; r++) {
            copy(src, srcOff + r * srcStride, dst, dstOff + r * dstStride, rowLen);
        }
    }

    @Override
    public void fill(Tensor t, float value) {
        switch (t.dtype()) {
            case I32: java.util.Arrays.fill(t.ints(), (int) value); break;
            case I64: java.util.Arrays.fill(t.longs(), (long) value); break;
            default: java.util.Arrays.fill(t.floats(), value);
        }
    }

    @Override
    public void release(Tensor t) {
        // heap memory: the garbage collector frees it once unreachable
    }

    @Override
    public Scope openScope() {
        return NO_SCOPE;
    }

    @Override
    public void synchronize() {
        // every CPU kernel has finished when it returns
    }

    // ------------------------------------------------------------------ dense algebra

    @Override
    public void groupedGemm(boolean transA, boolean transB, int groups, int[] m, int[] n, int[] k, float alpha,
                            Tensor a, int[] aOff, int lda, Tensor b, int[] bOff, int ldb, float beta, Tensor c,
                            int[] cOff, int ldc) {
        for (int g = 0; g < groups; g++) {
            if (m[g] > 0 && n[g] > 0) {
                gemm(transA, transB, m[g], n[g], k[g], alpha, a, aOff[g], lda, b, bOff[g], ldb, beta, c, cOff[g],
                        ldc);
            }
        }
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
        // Only the operand spans travel to native memory: handing OpenBLAS the heap arrays themselves would make
        // JNI copy each whole array (a whole stacked expert tensor for one expert's slice) in and out per call.
        Scratch s = SCRATCH.get();
        long aLen = span(transA ? k : m, transA ? m : k, lda);
        long bLen = span(transB ? n : k, transB ? k : n, ldb);
        long cLen = span(m, n, ldc);
        FloatPointer ap = s.a(aLen);
        FloatPointer bp = s.b(bLen);
        FloatPointer cp = s.c(cLen);
        ap.position(0).put(af, aOff, (int) aLen);
        bp.position(0).put(bf, bOff, (int) bLen);
        if (beta != 0f) {
            cp.position(0).put(cf, cOff, (int) cLen);
        }
        openblas_nolapack.cblas_sgemm(openblas_nolapack.CblasRowMajor,
                transA ? openblas_nolapack.CblasTrans : openblas_nolapack.CblasNoTrans,
                transB ? openblas_nolapack.CblasTrans : openblas_nolapack.CblasNoTrans,
                m, n, k, alpha, ap.position(0), lda, bp.position(0), ldb, beta, cp.position(0), ldc);
        if (ldc == n) {
            cp.position(0).get(cf, cOff, (int) cLen);
        } else {
            // Only C's own m x n block goes back: the gaps between its rows may belong to other threads' blocks
            // (the heads of one attention row), and writing the whole span back would undo their updates.
            for (int i = 0; i < m; i++) {
                cp.position((long) i * ldc).get(cf, cOff + i * ldc, n);
            }
        }
    }

    /** Elements from the first to one past the last element of a rows x cols block with row stride ld. */
    private static long span(int rows, int cols, int ld) {
        return (long) (rows - 1) * ld + cols;
    }

    /** Per-thread native operand buffers, grown on demand and reused across calls. */
    private static final class Scratch {
        private FloatPointer a = new FloatPointer(0L);
        private FloatPointer b = new FloatPointer(0L);
        private FloatPointer c = new FloatPointer(0L);

        private static FloatPointer ensure(FloatPointer p, long n) {
            if (p.capacity() >= n) {
                return p;
            }
            p.close();
            return new FloatPointer(Math.max(n, 1024L));
        }

        FloatPointer a(long n) {
            return a = ensure(a, n);
        }

        FloatPointer b(long n) {
            return b = ensure(b, n);
        }

        FloatPointer c(long n) {
            return c = ensure(c, n);
        }
    }

    private static final ThreadLocal<Scratch> SCRATCH = ThreadLocal.withInitial(Scratch::new);

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

    /**
     * Causal GQA attention, one (batch, query head) at a time: S = Q K^T by GEMM, a masked softmax per row (f32, the
     * log-sum-exp kept), then O = P V by GEMM. The T x T scores live only in a per-task scratch buffer.
     */
    @Override
    public void attentionForward(Tensor q, Tensor k, Tensor v, int batch, int seqLen, int qHeads, int kvHeads,
                                 int headDim, float scale, Tensor out, Tensor lse) {
        float[] lf = lse.floats();
        int group = qHeads / kvHeads;
        int qStride = qHeads * headDim;
        int kvStride = kvHeads * headDim;
        Par.range(batch * qHeads, (long) seqLen * seqLen * headDim, (from, to) -> {
            Tensor scores = Tensor.zeros(DType.F32, seqLen, seqLen);
            float[] sf = scores.floats();
            for (int bh = from; bh < to; bh++) {
                int b = bh / qHeads;
                int h = bh % qHeads;
                int g = h / group;
                int qOff = b * seqLen * qStride + h * headDim;
                int kvOff = b * seqLen * kvStride + g * headDim;
                gemm(false, true, seqLen, seqLen, headDim, scale, q, qOff, qStride, k, kvOff, kvStride, 0f, scores,
                        0, seqLen);
                for (int i = 0; i < seqLen; i++) {
                    int row = i * seqLen;
                    float max = Float.NEGATIVE_INFINITY;
                    for (int j = 0; j <= i; j++) {
                        max = Math.max(max, sf[row + j]);
                    }
                    float sum = 0f;
                    for (int j = 0; j <= i; j++) {
                        float e = (float) Math.exp(sf[row + j] - max);
                        sf[row + j] = e;
                        sum += e;
                    }
                    float inv = 1f / sum;
                    for (int j = 0; j <= i; j++) {
                        sf[row + j] *= inv;
                    }
                    for (int j = i + 1; j < seqLen; j++) {
                        sf[row + j] = 0f;
                    }
                    lf[bh * seqLen + i] = max + (float) Math.log(sum);
                }
                gemm(false, false, seqLen, headDim, seqLen, 1f, scores, 0, seqLen, v, kvOff, kvStride, 0f, out, qOff,
                        qStride);
            }
        });
    }

    /**
     * Backward of {@link #attentionForward}, one (batch, kv head) per task so that the task owns its dk/dv rows and
     * the dq rows of its query heads: P is recomputed from Q, K and the log-sum-exp, then dV += P^T dO,
     * dP = dO V^T, dS = P (dP - rowsum(dO * O)) scale, dQ = dS K, dK += dS^T Q, all products by GEMM.
     */
    @Override
    public void attentionBackward(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int batch,
                                  int seqLen, int qHeads, int kvHeads, int headDim, float scale, Tensor dq, Tensor dk,
                                  Tensor dv) {
        float[] dof = dOut.floats();
        float[] of = out.floats();
        float[] lf = lse.floats();
        float[] dkf = dk.floats();
        float[] dvf = dv.floats();
        int group = qHeads / kvHeads;
        int qStride = qHeads * headDim;
        int kvStride = kvHeads * headDim;
        Par.range(batch * kvHeads, (long) group * seqLen * seqLen * headDim * 4, (from, to) -> {
            Tensor p = Tensor.zeros(DType.F32, seqLen, seqLen);
            Tensor dp = Tensor.zeros(DType.F32, seqLen, seqLen);
            float[] pf = p.floats();
            float[] dpf = dp.floats();
            for (int bg = from; bg < to; bg++) {
                int b = bg / kvHeads;
                int g = bg % kvHeads;
                int kvOff = b * seqLen * kvStride + g * headDim;
                for (int j = 0; j < seqLen; j++) {
                    int o = kvOff + j * kvStride;
                    java.util.Arrays.fill(dkf, o, o + headDim, 0f);
                    java.util.Arrays.fill(dvf, o, o + headDim, 0f);
                }
                for (int h = g * group; h < (g + 1) * group; h++) {
                    int qOff = b * seqLen * qStride + h * headDim;
                    int lOff = (b * qHeads + h) * seqLen;
                    gemm(false, true, seqLen, seqLen, headDim, scale, q, qOff, qStride, k, kvOff, kvStride, 0f, p, 0,
                            seqLen);
                    gemm(false, true, seqLen, seqLen, headDim, 1f, dOut, qOff, qStride, v, kvOff, kvStride, 0f, dp,
                            0, seqLen);
                    for (int i = 0; i < seqLen; i++) {
                        int row = i * seqLen;
                        float li = lf[lOff + i];
                        float di = 0f;
                        int o = qOff + i * qStride;
                        for (int d = 0; d < headDim; d++) {
                            di += dof[o + d] * of[o + d];
                        }
                        for (int j = 0; j <= i; j++) {
                            float pij = (float) Math.exp(pf[row + j] - li);
                            pf[row + j] = pij;
                            dpf[row + j] = pij * (dpf[row + j] - di) * scale;
                        }
                        for (int j = i + 1; j < seqLen; j++) {
                            pf[row + j] = 0f;
                            dpf[row + j] = 0f;
                        }
                    }
                    // dV += P^T dO ; dQ = dS K ; dK += dS^T Q   (dp now holds dS)
                    gemm(true, false, seqLen, headDim, seqLen, 1f, p, 0, seqLen, dOut, qOff, qStride, 1f, dv, kvOff,
                            kvStride);
                    gemm(false, false, seqLen, headDim, seqLen, 1f, dp, 0, seqLen, k, kvOff, kvStride, 0f, dq, qOff,
                            qStride);
                    gemm(true, false, seqLen, headDim, seqLen, 1f, dp, 0, seqLen, q, qOff, qStride, 1f, dk, kvOff,
                            kvStride);
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
    public double crossEntropy(Tensor logits, Tensor targetTensor, int rows, int vocab, float gradScale,
                               Tensor dLogits) {
        int[] targets = targetTensor.ints();
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
                if (dLogits.dtype() != DType.F32) { // a gradient held in the GEMMs' dtype (Backend.gemmDType)
                    for (int j = 0; j < vocab; j++) {
                        df[o + j] = DType.round(dLogits.dtype(), df[o + j]);
                    }
                }
            }
        });
        double total = 0;
        for (double l : rowLoss) {
            total += l;
        }
        return total;
    }

    @Override
    public void embeddingForward(Tensor table, Tensor idTensor, int tokens, int hidden, Tensor out) {
        int[] ids = idTensor.ints();
        float[] tf = table.floats();
        float[] of = out.floats();
        int rows = table.numel() / hidden;
        for (int n = 0; n < tokens; n++) {
            if (ids[n] < 0 || ids[n] >= rows) {
                throw new IllegalArgumentException("token id " + ids[n] + " at position " + n
                        + " is outside the vocabulary [0, " + rows + ")");
            }
            System.arraycopy(tf, ids[n] * hidden, of, n * hidden, hidden);
        }
    }

    @Override
    public void embeddingBackward(Tensor dOut, Tensor idTensor, int tokens, int hidden, Tensor dTable) {
        int[] ids = idTensor.ints();
        float[] df = dOut.floats();
        float[] tf = dTable.floats();
        for (int n = 0; n < tokens; n++) {
            int o = ids[n] * hidden;
            int s = n * hidden;
            for (int j = 0; j < hidden; j++) {
                tf[o + j] += df[s + j];
            }
        }
    }

    // ------------------------------------------------------------------ mixture of experts

    @Override
    public void routerTopK(Tensor probs, int rows, int experts, int k, boolean normalize, Tensor topIdx,
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

    @Override
    public void routerStats(Tensor topIdx, Tensor probs, int rows, int experts, int k, double[] stats) {
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

    @Override
    public void routerBackward(Tensor dWeights, Tensor topIdx, Tensor topVal, Tensor probs, Tensor auxGrad,
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

    @Override
    public void gatherRows(Tensor src, Tensor index, int n, int width, int divisor, Tensor dst) {
        float[] sf = src.floats();
        float[] df = dst.floats();
        int[] idx = index.ints();
        Par.range(n, width, (from, to) -> {
            for (int j = from; j < to; j++) {
                System.arraycopy(sf, (idx[j] / divisor) * width, df, j * width, width);
            }
        });
    }

    @Override
    public void scatterRows(Tensor src, Tensor index, int n, int width, Tensor dst) {
        float[] sf = src.floats();
        float[] df = dst.floats();
        int[] idx = index.ints();
        Par.range(n, width, (from, to) -> {
            for (int j = from; j < to; j++) {
                System.arraycopy(sf, j * width, df, idx[j] * width, width);
            }
        });
    }

    @Override
    public void moeCombine(Tensor slots, Tensor weights, int tokens, int k, int width, Tensor y) {
        float[] sf = slots.floats();
        float[] w = weights.floats();
        float[] yf = y.floats();
        Par.range(tokens, (long) k * width, (from, to) -> {
            for (int t = from; t < to; t++) {
                for (int j = 0; j < width; j++) {
                    yf[t * width + j] = 0f;
                }
                for (int q = 0; q < k; q++) {
                    float wq = w[t * k + q];
                    int so = (t * k + q) * width;
                    for (int j = 0; j < width; j++) {
                        yf[t * width + j] += wq * sf[so + j];
                    }
                }
            }
        });
    }

    @Override
    public void moeCombineBackward(Tensor dy, Tensor slots, Tensor weights, int tokens, int k, int width,
                                   Tensor dSlots, Tensor dWeights) {
        float[] dyf = dy.floats();
        float[] sf = slots.floats();
        float[] w = weights.floats();
        float[] dsf = dSlots.floats();
        float[] dwf = dWeights.floats();
        Par.range(tokens, (long) k * width * 2, (from, to) -> {
            for (int t = from; t < to; t++) {
                for (int q = 0; q < k; q++) {
                    int s = t * k + q;
                    float dot = 0f;
                    for (int j = 0; j < width; j++) {
                        dsf[s * width + j] = w[s] * dyf[t * width + j];
                        dot += dyf[t * width + j] * sf[s * width + j];
                    }
                    dwf[s] = dot;
                }
            }
        });
    }

    @Override
    public void sumSlots(Tensor src, int tokens, int k, int width, Tensor dst) {
        float[] sf = src.floats();
        float[] df = dst.floats();
        Par.range(tokens, (long) k * width, (from, to) -> {
            for (int t = from; t < to; t++) {
                for (int q = 0; q < k; q++) {
                    int so = (t * k + q) * width;
                    for (int j = 0; j < width; j++) {
                        df[t * width + j] += sf[so + j];
                    }
                }
            }
        });
    }

    // ------------------------------------------------------------------ optimizer and helpers

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
        AdamW.Coefficients c = AdamW.Coefficients.of(lr, beta1, beta2, weightDecay, step);
        float decay = c.decay();
        float w1 = c.w1();
        float w2 = c.w2();
        float stepSize = c.stepSize();
        float bc2Sqrt = c.bc2Sqrt();
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

package dev.sparkmoe.core.backend;

import static dev.sparkmoe.core.backend.Rand.assertClose;
import static dev.sparkmoe.core.backend.Rand.toDouble;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.junit.jupiter.api.Test;

/**
 * Forward kernels of CpuBackend against the double-precision references in {@link Refs}, on seeded random inputs.
 * Tolerances are absolute on O(1) outputs and stated per test; they sit a few times above the f32 rounding these
 * kernels accumulate (about 1e-7 relative per operation over at most a few hundred operations).
 */
class CpuBackendForwardTest {
    private final CpuBackend be = new CpuBackend();

    @Test
    void rmsNormMatchesReference() {
        Rand r = new Rand(11);
        int rows = 37;
        int dim = 48;
        float eps = 1e-6f;
        Tensor x = Tensor.of(r.floats(rows * dim, 2), rows, dim);
        Tensor w = Tensor.of(r.uniform(dim, 0.5, 1.5), dim);
        Tensor y = Tensor.zeros(DType.F32, rows, dim);
        Tensor rstd = Tensor.zeros(DType.F32, rows);
        be.rmsNormForward(x, w, eps, rows, dim, y, rstd);
        double[] rstdRef = new double[rows];
        double[] ref = Refs.rmsNorm(toDouble(x.floats()), toDouble(w.floats()), eps, rows, dim, rstdRef);
        assertClose("rmsNorm y", ref, y.floats(), 2e-6 * Rand.maxAbs(ref)); // tol: 2e-6 x max|y|
        assertClose("rmsNorm rstd", rstdRef, rstd.floats(), 2e-6 * Rand.maxAbs(rstdRef));
    }

    @Test
    void ropeMatchesRotateHalfFormula() {
        Rand r = new Rand(12);
        int batch = 3;
        int seqLen = 11;
        int heads = 3;
        int d = 16;
        double theta = 10000;
        float[] x0 = r.floats(batch * seqLen * heads * d, 1);
        Tensor x = Tensor.of(x0.clone(), batch * seqLen, heads * d);
        be.rope(x, batch * seqLen, heads, d, seqLen, (float) theta, false);
        double[] ref = Refs.rope(toDouble(x0), batch * seqLen, heads, d, seqLen, theta);
        // Angles are formed in f32 (pos * inv_freq, as transformers does): error about pos * 2^-24 rad.
        assertClose("rope", ref, x.floats(), 5e-6);
        // inverse undoes forward (the rotation is orthogonal).
        be.rope(x, batch * seqLen, heads, d, seqLen, (float) theta, true);
        assertClose("rope inverse o rope", toDouble(x0), x.floats(), 5e-6);
    }

    @Test
    void attentionMatchesCausalGqaReference() {
        Rand r = new Rand(13);
        int batch = 2;
        int t = 7;
        int hq = 6;
        int hkv = 2;
        int d = 8;
        float scale = (float) (1 / Math.sqrt(d));
        Tensor q = Tensor.of(r.floats(batch * t * hq * d, 1.5), batch * t, hq * d);
        Tensor k = Tensor.of(r.floats(batch * t * hkv * d, 1.5), batch * t, hkv * d);
        Tensor v = Tensor.of(r.floats(batch * t * hkv * d, 1), batch * t, hkv * d);
        Tensor out = Tensor.zeros(DType.F32, batch * t, hq * d);
        Tensor lse = Tensor.of(r.floats(batch * hq * t, 1), batch * hq * t); // garbage in: must be overwritten
        be.attentionForward(q, k, v, batch, t, hq, hkv, d, scale, out, lse);
        double[] ref = Refs.attention(toDouble(q.floats()), toDouble(k.floats()), toDouble(v.floats()), batch, t, hq,
                hkv, d, scale, null);
        assertClose("attention out", ref, out.floats(), 2e-6);
        // log-sum-exp of each causal score row, in double
        double[] lseRef = new double[batch * hq * t];
        int g = hq / hkv;
        for (int b = 0; b < batch; b++) {
            for (int h = 0; h < hq; h++) {
                for (int i = 0; i < t; i++) {
                    double sum = 0;
                    for (int j = 0; j <= i; j++) {
                        double sc = 0;
                        for (int e = 0; e < d; e++) {
                            sc += (double) q.floats()[(b * t + i) * hq * d + h * d + e]
                                    * k.floats()[(b * t + j) * hkv * d + (h / g) * d + e];
                        }
                        sum += Math.exp(sc * scale);
                    }
                    lseRef[(b * hq + h) * t + i] = Math.log(sum);
                }
            }
        }
        assertClose("attention lse", lseRef, lse.floats(), 2e-6);
    }

    @Test
    void softmaxMatchesReferenceAndIsStableForLargeLogits() {
        Rand r = new Rand(14);
        int rows = 9;
        int cols = 33;
        float[] x0 = r.floats(rows * cols, 4);
        for (int j = 0; j < cols; j++) {
            x0[2 * cols + j] += 80f;   // exp(80+) overflows f32 unless the max is subtracted
            x0[5 * cols + j] -= 120f;
        }
        Tensor x = Tensor.of(x0, rows, cols);
        Tensor out = Tensor.zeros(DType.F32, rows, cols);
        be.softmaxRows(x, rows, cols, out);
        assertClose("softmax", Refs.softmaxRows(toDouble(x0), rows, cols), out.floats(), 1e-6);
    }

    @Test
    void crossEntropyMatchesReferenceWithIgnoreIndex() {
        Rand r = new Rand(15);
        int rows = 10;
        int vocab = 29;
        float[] l0 = r.floats(rows * vocab, 3);
        int[] targets = new int[rows];
        for (int i = 0; i < rows; i++) {
            targets[i] = r.nextInt(vocab);
        }
        targets[3] = -100;
        targets[7] = -100;
        Tensor logits = Tensor.of(l0, rows, vocab);
        Tensor dl = Tensor.of(r.floats(rows * vocab, 1), rows, vocab); // garbage in: must be overwritten
        double loss = be.crossEntropy(logits, Tensor.ofInts(targets, rows), rows, vocab, 0.125f, dl);
        double ref = Refs.crossEntropySum(toDouble(l0), targets, rows, vocab);
        assertEquals(ref, loss, 1e-6 * Math.abs(ref)); // per-row log-sum-exp is in double; logits are f32 exact
        for (int j = 0; j < vocab; j++) {
            assertEquals(0f, dl.floats()[3 * vocab + j]);
            assertEquals(0f, dl.floats()[7 * vocab + j]);
        }
        int[] bad = targets.clone();
        bad[0] = vocab;
        assertThrows(IllegalArgumentException.class,
                () -> be.crossEntropy(logits, Tensor.ofInts(bad, rows), rows, vocab, 1f, dl));
        // in place (dLogits = logits, as training calls it): the same loss and gradient
        Tensor inPlace = Tensor.of(l0.clone(), rows, vocab);
        double again = be.crossEntropy(inPlace, Tensor.ofInts(targets, rows), rows, vocab, 0.125f, inPlace);
        Tensor separate = Tensor.zeros(DType.F32, rows, vocab);
        be.crossEntropy(Tensor.of(l0.clone(), rows, vocab), Tensor.ofInts(targets, rows), rows, vocab, 0.125f,
                separate);
        assertEquals(loss, again);
        assertArrayEquals(separate.floats(), inPlace.floats());
    }

    @Test
    void adamwMatchesTorchFormulaInDouble() {
        Rand r = new Rand(16);
        int n = 1000;
        double lr = 1e-2;
        double b1 = 0.9;
        double b2 = 0.95;
        double eps = 1e-8;
        for (double wd : new double[] {0.0, 0.1}) {
            float[] p0 = r.floats(n, 1);
            Tensor p = Tensor.of(p0.clone(), n);
            Tensor m = Tensor.zeros(DType.F32, n);
            Tensor v = Tensor.zeros(DType.F32, n);
            double[] pd = toDouble(p0);
            double[] md = new double[n];
            double[] vd = new double[n];
            for (int step = 1; step <= 5; step++) {
                float[] g = r.floats(n, 0.5);
                be.adamw(p, Tensor.of(g, n), m, v, n, (float) lr, (float) b1, (float) b2, (float) eps, (float) wd,
                        step);
                // torch.optim.AdamW (single tensor): p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
                // p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
                for (int i = 0; i < n; i++) {
                    pd[i] *= 1 - lr * wd;
                    md[i] = b1 * md[i] + (1 - b1) * g[i];
                    vd[i] = b2 * vd[i] + (1 - b2) * g[i] * g[i];
                    double denom = Math.sqrt(vd[i]) / Math.sqrt(1 - Math.pow(b2, step)) + eps;
                    pd[i] -= lr / (1 - Math.pow(b1, step)) * md[i] / denom;
                }
                // tol: f32 rounding of p (|p| <= ~1.05, ulp/2 ~ 6e-8) per step plus 1e-5 relative of the lr-sized update
                assertClose("adamw param wd=" + wd + " step " + step, pd, p.floats(), 2e-7 * step + 1e-5 * lr);
                assertClose("adamw m", md, m.floats(), 1e-6);
                assertClose("adamw v", vd, v.floats(), 1e-6);
            }
        }
    }

    @Test
    void siluMulEmbeddingAxpyScaleSumSquares() {
        Rand r = new Rand(17);
        int n = 500;
        float[] g = r.floats(n + 10, 6);
        float[] u = r.floats(n + 10, 2);
        Tensor out = Tensor.of(r.floats(n + 10, 1), n + 10);
        float[] before = out.floats().clone();
        // gate and up one row of n at element 4, out contiguous from 0
        be.siluMulForward(Tensor.of(g, n + 10), 4, Tensor.of(u, n + 10), 4, 1, n, n, out);
        double[] ref = Refs.siluMul(toDouble(g), toDouble(u));
        for (int i = 0; i < n + 10; i++) {
            if (i >= n) {
                assertEquals(before[i], out.floats()[i], "siluMul wrote past [0, n)");
            } else {
                assertEquals(ref[i + 4], out.floats()[i], 1e-6 * (1 + Math.abs(ref[i + 4])), "siluMul " + i);
            }
        }

        int hidden = 5;
        Tensor table = Tensor.of(r.floats(7 * hidden, 1), 7, hidden);
        int[] ids = {3, 0, 6, 3};
        Tensor emb = Tensor.zeros(DType.F32, ids.length, hidden);
        be.embeddingForward(table, Tensor.ofInts(ids, ids.length), ids.length, hidden, emb);
        for (int t = 0; t < ids.length; t++) {
            for (int j = 0; j < hidden; j++) {
                assertEquals(table.floats()[ids[t] * hidden + j], emb.floats()[t * hidden + j]);
            }
        }
        assertThrows(IllegalArgumentException.class,
                () -> be.embeddingForward(table, Tensor.ofInts(new int[] {7}, 1), 1, hidden, emb));

        float[] x = r.floats(100, 1);
        float[] y = r.floats(100, 1);
        float[] y0 = y.clone();
        be.axpy(0.5f, Tensor.of(x, 100), 10, Tensor.of(y, 100), 20, 30);
        for (int i = 0; i < 100; i++) {
            float expected = i >= 20 && i < 50 ? y0[i] + 0.5f * x[i - 10] : y0[i];
            assertEquals(expected, y[i]);
        }
        float[] s = y.clone();
        be.scale(Tensor.of(s, 100), -3f);
        for (int i = 0; i < 100; i++) {
            assertEquals(y[i] * -3f, s[i]);
        }
        double ss = 0;
        for (float f : y) {
            ss += (double) f * f;
        }
        assertEquals(ss, be.sumSquares(Tensor.of(y, 100)), 1e-12 * ss);
    }

    @Test
    void rmsNormRstdIsPerRowNotShared() {
        // A row of tiny values next to a row of large values: a shared normaliser would be caught here.
        Tensor x = Tensor.of(new float[] {1e-3f, -2e-3f, 3e-3f, 1e3f, 2e3f, -3e3f}, 2, 3);
        Tensor w = Tensor.of(new float[] {1f, 1f, 1f}, 3);
        Tensor y = Tensor.zeros(DType.F32, 2, 3);
        Tensor rstd = Tensor.zeros(DType.F32, 2);
        be.rmsNormForward(x, w, 1e-12f, 2, 3, y, rstd);
        double[] ref = Refs.rmsNorm(toDouble(x.floats()), toDouble(w.floats()), 1e-12, 2, 3, null);
        assertArrayEquals(ref, toDouble(y.floats()), 1e-5);
    }
}

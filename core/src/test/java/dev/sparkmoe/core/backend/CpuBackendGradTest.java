package dev.sparkmoe.core.backend;

import static dev.sparkmoe.core.backend.Rand.toDouble;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.function.ToDoubleFunction;
import org.junit.jupiter.api.Test;

/**
 * Gradient checks of the backward kernels. For each kernel the scalar objective is L = sum(W * forward(inputs)) with
 * fixed random weights W; forward is the double-precision reference of {@link Refs}, and dL/d(input) is taken by
 * central differences in double (step 1e-6: truncation ~1e-12, rounding ~1e-9, both far below the tolerance).
 * The analytic gradient comes from the f32 backward kernel given dOut = W.
 *
 * <p>Tolerance: |analytic - numeric| <= 2e-5 * max|numeric| + 1e-7 per element. The f32 kernels reproduce a double
 * computation to about 1e-6 relative on these small shapes, so a wrong term (a missing factor, a transposed index, a
 * wrong GQA head) fails by orders of magnitude, while rounding does not.
 */
class CpuBackendGradTest {
    private static final double STEP = 1e-6;
    private final CpuBackend be = new CpuBackend();

    /** Central differences of {@code objective} with respect to every element of {@code x} (restored after). */
    static double[] numericGrad(double[] x, ToDoubleFunction<double[]> objective) {
        double[] g = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            double keep = x[i];
            x[i] = keep + STEP;
            double plus = objective.applyAsDouble(x);
            x[i] = keep - STEP;
            double minus = objective.applyAsDouble(x);
            x[i] = keep;
            g[i] = (plus - minus) / (2 * STEP);
        }
        return g;
    }

    static void assertGrad(String what, double[] numeric, float[] analytic, int analyticOff) {
        double tol = 2e-5 * Rand.maxAbs(numeric) + 1e-7;
        for (int i = 0; i < numeric.length; i++) {
            double d = Math.abs(numeric[i] - analytic[analyticOff + i]);
            if (!(d <= tol)) {
                fail(what + "[" + i + "]: numeric " + numeric[i] + ", analytic " + analytic[analyticOff + i]
                        + " (|diff| " + d + " > " + tol + ")");
            }
        }
    }

    @Test
    void rmsNormBackward() {
        Rand r = new Rand(21);
        int rows = 6;
        int dim = 10;
        double eps = 1e-6;
        float[] xf = r.floats(rows * dim, 2);
        float[] wf = r.uniform(dim, 0.5, 1.5);
        double[] wts = toDouble(r.floats(rows * dim, 1));
        double[] x = toDouble(xf);
        double[] w = toDouble(wf);

        Tensor y = Tensor.zeros(DType.F32, rows, dim);
        Tensor rstd = Tensor.zeros(DType.F32, rows);
        be.rmsNormForward(Tensor.of(xf, rows, dim), Tensor.of(wf, dim), (float) eps, rows, dim, y, rstd);
        Tensor dx = Tensor.of(r.floats(rows * dim, 1), rows, dim); // written
        float[] dw0 = r.floats(dim, 1);
        Tensor dw = Tensor.of(dw0.clone(), dim); // accumulated
        be.rmsNormBackward(Tensor.of(toFloat(wts), rows, dim), Tensor.of(xf, rows, dim), Tensor.of(wf, dim), rstd,
                rows, dim, dx, dw);

        assertGrad("rmsNorm dx", numericGrad(x, xx -> Refs.dot(wts, Refs.rmsNorm(xx, w, eps, rows, dim, null))),
                dx.floats(), 0);
        double[] dwNum = numericGrad(w, ww -> Refs.dot(wts, Refs.rmsNorm(x, ww, eps, rows, dim, null)));
        float[] dwOnly = new float[dim];
        for (int j = 0; j < dim; j++) {
            dwOnly[j] = dw.floats()[j] - dw0[j];
        }
        assertGrad("rmsNorm dw (accumulated onto its previous value)", dwNum, dwOnly, 0);
    }

    @Test
    void ropeInverseIsTheBackward() {
        Rand r = new Rand(22);
        int batch = 2;
        int seqLen = 5;
        int heads = 2;
        int d = 8;
        int tokens = batch * seqLen;
        double theta = 1000;
        double[] x = toDouble(r.floats(tokens * heads * d, 1));
        double[] wts = toDouble(r.floats(tokens * heads * d, 1));
        Tensor g = Tensor.of(toFloat(wts), tokens, heads * d);
        be.rope(g, tokens, heads, d, seqLen, (float) theta, true);
        assertGrad("rope inverse", numericGrad(x, xx -> Refs.dot(wts, Refs.rope(xx, tokens, heads, d, seqLen, theta))),
                g.floats(), 0);
    }

    @Test
    void attentionBackward() {
        Rand r = new Rand(23);
        int batch = 2;
        int t = 4;
        int hq = 4;
        int hkv = 2;
        int d = 4;
        double scale = 1 / Math.sqrt(d);
        float[] qf = r.floats(batch * t * hq * d, 1.5);
        float[] kf = r.floats(batch * t * hkv * d, 1.5);
        float[] vf = r.floats(batch * t * hkv * d, 1);
        double[] wts = toDouble(r.floats(qf.length, 1));
        Tensor q = Tensor.of(qf, batch * t, hq * d);
        Tensor k = Tensor.of(kf, batch * t, hkv * d);
        Tensor v = Tensor.of(vf, batch * t, hkv * d);
        Tensor out = Tensor.zeros(DType.F32, batch * t, hq * d);
        Tensor lse = Tensor.zeros(DType.F32, batch * hq * t);
        be.attentionForward(q, k, v, batch, t, hq, hkv, d, (float) scale, out, lse);
        Tensor dq = Tensor.of(r.floats(qf.length, 1), batch * t, hq * d); // all written, garbage in
        Tensor dk = Tensor.of(r.floats(kf.length, 1), batch * t, hkv * d);
        Tensor dv = Tensor.of(r.floats(vf.length, 1), batch * t, hkv * d);
        be.attentionBackward(Tensor.of(toFloat(wts), batch * t, hq * d), q, k, v, out, lse, batch, t, hq, hkv, d,
                (float) scale, dq, dk, dv);
        double[] qd = toDouble(qf);
        double[] kd = toDouble(kf);
        double[] vd = toDouble(vf);
        assertGrad("attention dq", numericGrad(qd,
                x -> Refs.dot(wts, Refs.attention(x, kd, vd, batch, t, hq, hkv, d, scale, null))), dq.floats(), 0);
        assertGrad("attention dk", numericGrad(kd,
                x -> Refs.dot(wts, Refs.attention(qd, x, vd, batch, t, hq, hkv, d, scale, null))), dk.floats(), 0);
        assertGrad("attention dv", numericGrad(vd,
                x -> Refs.dot(wts, Refs.attention(qd, kd, x, batch, t, hq, hkv, d, scale, null))), dv.floats(), 0);
    }

    @Test
    void siluMulBackward() {
        Rand r = new Rand(24);
        int n = 40;
        int off = 3;
        float[] gf = r.floats(n + 2 * off, 6);
        float[] uf = r.floats(n + 2 * off, 2);
        double[] w = toDouble(r.floats(n, 1));
        Tensor dg = Tensor.zeros(DType.F32, n + 2 * off);
        Tensor du = Tensor.zeros(DType.F32, n + 2 * off);
        // gate and up one row of n at element off (dGate and dUp written there), dOut contiguous
        be.siluMulBackward(Tensor.of(toFloat(w), n), Tensor.of(gf, n + 2 * off), off, Tensor.of(uf, n + 2 * off), off,
                1, n, n, dg, du);
        double[] g = slice(toDouble(gf), off, n);
        double[] u = slice(toDouble(uf), off, n);
        assertGrad("siluMul dGate", numericGrad(g, x -> Refs.dot(w, Refs.siluMul(x, u))), dg.floats(), off);
        assertGrad("siluMul dUp", numericGrad(u, x -> Refs.dot(w, Refs.siluMul(g, x))), du.floats(), off);
        assertEquals(0f, dg.floats()[0], "siluMulBackward wrote before its offset");
        assertEquals(0f, du.floats()[n + off], "siluMulBackward wrote past its range");
    }

    @Test
    void crossEntropyDLogits() {
        Rand r = new Rand(25);
        int rows = 5;
        int vocab = 7;
        float[] lf = r.floats(rows * vocab, 3);
        int[] targets = {2, -100, 6, 0, 2};
        float gradScale = 0.25f;
        Tensor dl = Tensor.zeros(DType.F32, rows, vocab);
        be.crossEntropy(Tensor.of(lf, rows, vocab), Tensor.ofInts(targets, rows), rows, vocab, gradScale, dl);
        // The objective here is the loss itself (scaled): dLogits = gradScale * d(sum CE)/d(logits).
        assertGrad("crossEntropy dLogits", numericGrad(toDouble(lf),
                x -> gradScale * Refs.crossEntropySum(x, targets, rows, vocab)), dl.floats(), 0);
    }

    @Test
    void embeddingBackward() {
        Rand r = new Rand(26);
        int vocab = 6;
        int hidden = 4;
        int[] ids = {1, 4, 1, 0, 5, 1, 4}; // repeated ids accumulate; ids 2 and 3 get no gradient
        double[] table = toDouble(r.floats(vocab * hidden, 1));
        double[] wts = toDouble(r.floats(ids.length * hidden, 1));
        float[] d0 = r.floats(vocab * hidden, 1);
        Tensor dTable = Tensor.of(d0.clone(), vocab, hidden);
        be.embeddingBackward(Tensor.of(toFloat(wts), ids.length, hidden), Tensor.ofInts(ids, ids.length), ids.length,
                hidden, dTable);
        float[] added = new float[d0.length];
        for (int i = 0; i < d0.length; i++) {
            added[i] = dTable.floats()[i] - d0[i];
        }
        assertGrad("embedding dTable (accumulated)",
                numericGrad(table, x -> Refs.dot(wts, Refs.embedding(x, ids, hidden))), added, 0);
    }

    static float[] toFloat(double[] d) {
        float[] f = new float[d.length];
        for (int i = 0; i < d.length; i++) {
            f[i] = (float) d[i];
        }
        return f;
    }

    static double[] slice(double[] d, int off, int n) {
        double[] s = new double[n];
        System.arraycopy(d, off, s, 0, n);
        return s;
    }
}

package dev.sparkmoe.core.backend;

import static dev.sparkmoe.core.backend.CpuGemm.gemm;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * The CPU backend's causal grouped-query attention, forward and backward: its products go through {@link CpuGemm},
 * its softmax rows are plain Java, and the T x T score matrices live only in per-task scratch tensors.
 */
final class CpuAttention {
    private CpuAttention() {
    }

    /**
     * Causal GQA attention, one (batch, query head) at a time: S = Q K^T by GEMM, a masked softmax per row (f32, the
     * log-sum-exp kept), then O = P V by GEMM. The T x T scores live only in a per-task scratch buffer.
     */
    static void attentionForward(Tensor q, Tensor k, Tensor v, int batch, int seqLen, int qHeads, int kvHeads,
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
    static void attentionBackward(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int batch,
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
}

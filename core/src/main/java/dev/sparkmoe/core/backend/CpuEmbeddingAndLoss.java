package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * The CPU backend's ends of the model: the fused softmax cross-entropy with its logits gradient (ignored positions
 * marked -100), and the token embedding lookup and its gradient.
 */
final class CpuEmbeddingAndLoss {
    private CpuEmbeddingAndLoss() {
    }

    static double crossEntropy(Tensor logits, Tensor targetTensor, int rows, int vocab, float gradScale,
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

    static void embeddingForward(Tensor table, Tensor idTensor, int tokens, int hidden, Tensor out) {
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

    static void embeddingBackward(Tensor dOut, Tensor idTensor, int tokens, int hidden, Tensor dTable) {
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
}

package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * The CPU backend's RMSNorm (forward, and backward with the weight gradient accumulated column by column) and rotary
 * position embedding (rotate-half layout, inverse rotation for the backward).
 */
final class CpuNormAndRope {
    private CpuNormAndRope() {
    }

    static void rmsNormForward(Tensor x, Tensor w, float eps, int rows, int dim, Tensor y, Tensor rstd) {
        float[] xf = x.floats();
        float[] wf = w.floats();
        float[] yf = y.floats();
        float[] rf = rstd.floats();
        DType out = y.dtype(); // F32, or the GEMMs' dtype (Backend.rmsNormForward): each value rounded to it
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
                    yf[o + j] = DType.round(out, wf[j] * (xf[o + j] * rs));
                }
            }
        });
    }

    static void rmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, int rows, int dim, Tensor dx, Tensor dw) {
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

    static void rope(Tensor x, int tokens, int heads, int headDim, int seqLen, float theta, boolean inverse) {
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
}

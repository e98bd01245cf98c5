package dev.sparkmoe.core.model;

import dev.sparkmoe.core.testing.TokenBatch;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.Tensor;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * The experts' gate and up projections run as one {@link Backend#groupedGemmSplitB} each way (forward NT into the
 * [rows, 2I] gate-and-up tensor, backward NN into the routed rows' gradient), on the two weights as they are, split at
 * I, and as a second forward under selective checkpointing: what a device's one-launch split-B kernel receives. The
 * other expert GEMMs stay plain grouped GEMMs (down forward, dAct, dWd, dWg, dWu).
 */
class ExpertsGateUpGemmTest {

    /** One groupedGemmSplitB call as the backend saw it. */
    record Split(boolean transB, Tensor b, Tensor b2, int split, int ldb, int lda, int ldc, float beta) {
    }

    /** A step of the 3-layer test model (layer 0 dense, 1 and 2 MoE) on a backend that records the split-B calls. */
    private static void step(ActivationCheckpointing mode, List<Split> splits, int[] grouped, Qwen3MoeModel[] out) {
        CpuBackend cpu = new CpuBackend();
        Backend be = (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class},
                (proxy, method, args) -> {
                    if (method.getName().equals("groupedGemmSplitB")) {
                        splits.add(new Split((boolean) args[0], (Tensor) args[9], (Tensor) args[11], (int) args[14],
                                (int) args[13], (int) args[8], (int) args[18], (float) args[15]));
                    } else if (method.getName().equals("groupedGemm")) {
                        grouped[0]++;
                    }
                    try {
                        return method.invoke(cpu, args);
                    } catch (InvocationTargetException e) {
                        throw e.getCause();
                    }
                });
        Qwen3MoeConfig config = ActivationCheckpointingTest.config(false);
        Qwen3MoeModel model = new Qwen3MoeModel(config, be);
        model.initRandom(21, 0.2);
        model.setActivationCheckpointing(mode);
        SplittableRandom r = new SplittableRandom(8);
        int n = ActivationCheckpointingTest.B * ActivationCheckpointingTest.T;
        TokenBatch batch = TokenBatch.random(r, config.vocabSize(), n);
        int[] ids = batch.ids();
        int[] targets = batch.targets();
        Qwen3MoeModel.Pass pass = model.forward(ids, targets, ActivationCheckpointingTest.B,
                ActivationCheckpointingTest.T, n, 0.01, StatsReducer.LOCAL);
        model.backward(pass);
        out[0] = model;
    }

    /** The forward's split-B GEMM of a layer: routed rows [rows, H] times [Wg; Wu]^T into gateUp [rows, 2I]. */
    private static Split forward(Map<String, Parameter> p, int layer, int inter, int hidden) {
        String e = "model.layers." + layer + ".mlp.experts.";
        return new Split(true, p.get(e + "gate_proj").value(), p.get(e + "up_proj").value(), inter, hidden, hidden,
                2 * inter, 0f);
    }

    @Test
    void gateAndUpAreOneSplitBGemmEachWay() {
        for (ActivationCheckpointing mode : ActivationCheckpointing.values()) {
            List<Split> splits = new ArrayList<>();
            int[] grouped = {0};
            Qwen3MoeModel[] model = new Qwen3MoeModel[1];
            step(mode, splits, grouped, model);
            Map<String, Parameter> p = model[0].namedParameters();
            Qwen3MoeConfig c = ActivationCheckpointingTest.config(false);
            int inter = c.moeIntermediateSize();
            int hidden = c.hiddenSize();
            List<Split> expected = new ArrayList<>();
            for (int layer = 1; layer <= 2; layer++) {
                expected.add(forward(p, layer, inter, hidden));
            }
            for (int layer = 2; layer >= 1; layer--) { // backward runs the layers in reverse
                if (mode != ActivationCheckpointing.NONE) { // the recompute makes gate and up again first
                    expected.add(forward(p, layer, inter, hidden));
                }
                String e = "model.layers." + layer + ".mlp.experts.";
                expected.add(new Split(false, p.get(e + "gate_proj").value(), p.get(e + "up_proj").value(), inter,
                        hidden, 2 * inter, hidden, 0f));
            }
            List<Split> got = splits;
            assertEquals(expected.size(), got.size(), mode + ": split-B GEMMs");
            for (int i = 0; i < got.size(); i++) {
                Split w = expected.get(i);
                Split g = got.get(i);
                String what = mode + ", split-B GEMM " + i;
                assertEquals(w.transB(), g.transB(), what);
                assertSame(w.b(), g.b(), what + ": B1 is the gate weight");
                assertSame(w.b2(), g.b2(), what + ": B2 is the up weight");
                assertEquals(List.of(w.split(), w.ldb(), w.lda(), w.ldc()), List.of(g.split(), g.ldb(), g.lda(),
                        g.ldc()), what + ": split, ldb, lda, ldc");
                assertEquals(w.beta(), g.beta(), what + ": beta");
            }
            // per MoE layer: the down projection (again under full checkpointing's recompute), dAct, dWd, dWg, dWu
            int downForwards = mode == ActivationCheckpointing.FULL ? 2 : 1;
            assertEquals(2 * (downForwards + 4), grouped[0], mode + ": plain grouped GEMMs");
        }
    }
}

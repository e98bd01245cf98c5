package dev.sparkmoe.parallel.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * {@link DistributedTrainer#step} takes the optimizer step in one pass per tensor (the clipping coefficient applied
 * as the gradient is read) and, with clipping off, measures the gradient norm in that pass instead of one of its own:
 * the same losses, norms and weights, bit for bit, as {@code computeGradients} then {@code applyGradients}, which
 * measure the norm first and scale the gradients before the update; at world 1 and under FSDP.
 */
class OptimizerPassTest {
    @BeforeAll
    static void setUp() throws Exception {
        LayoutEquivalenceTest.loadFixture();
    }

    static TrainerSpec spec(int dp, double clip) {
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(1e-3, 1e-4, 1, 4, "cosine", 0.9, 0.95,
                1e-8, 0.1, clip, 1);
        return new TrainerSpec(LayoutEquivalenceTest.configJson, null, 0, dp, 1, LayoutEquivalenceTest.SEQ, opt,
                "cpu", -1);
    }

    record Run(double[] loss, double[] norm, Map<String, Tensor> state) {
    }

    static Run run(int dp, double clip, boolean viaStep) {
        return InJvmRanks.run(dp, Duration.ofSeconds(60), c -> {
            try (DistributedTrainer t = new DistributedTrainer(spec(dp, clip), c, new CpuBackend(),
                    LayoutEquivalenceTest.full)) {
                double[] loss = new double[3];
                double[] norm = new double[3];
                for (int s = 0; s < 3; s++) {
                    int[] mine = dev.sparkmoe.parallel.dtensor.DTensor.chunkRange(LayoutEquivalenceTest.batch.size(),
                            dp, c.rank());
                    List<int[]> share = LayoutEquivalenceTest.batch.subList(mine[0], mine[1]);
                    if (viaStep) {
                        StepMetrics m = t.step(share);
                        loss[s] = m.loss();
                        norm[s] = m.gradNorm();
                    } else {
                        List<int[]> in = new ArrayList<>(), tg = new ArrayList<>();
                        for (int[] q : share) {
                            in.add(Arrays.copyOfRange(q, 0, LayoutEquivalenceTest.SEQ));
                            tg.add(Arrays.copyOfRange(q, 1, LayoutEquivalenceTest.SEQ + 1));
                        }
                        DistributedTrainer.Gradients g = t.computeGradients(in, tg, LayoutEquivalenceTest.SEQ);
                        t.applyGradients(g.gradNorm());
                        loss[s] = g.lmLoss();
                        norm[s] = g.gradNorm();
                    }
                }
                return new Run(loss, norm, t.rankState());
            }
        }).get(0);
    }

    @ParameterizedTest(name = "dp_shard={0}, clip={1}")
    @CsvSource({"1,0", "1,0.05", "2,0", "2,0.05"})
    void theStepsPassGivesTheSeparatePassesResults(int dp, double clip) {
        Run passes = run(dp, clip, false);
        Run step = run(dp, clip, true);
        assertArrayEquals(passes.loss(), step.loss(), "losses");
        assertArrayEquals(passes.norm(), step.norm(), "gradient norms");
        for (double n : step.norm()) {
            assertTrue(Double.isFinite(n) && n > 0, "a measured norm: " + n);
        }
        if (clip > 0) {
            assertTrue(passes.norm()[0] > clip, "the clipping is exercised: norm " + passes.norm()[0]);
        }
        for (String k : passes.state().keySet()) {
            if (k.startsWith("param/") || k.startsWith("exp_avg")) {
                assertArrayEquals(passes.state().get(k).floats(), step.state().get(k).floats(), k);
            }
        }
        assertEquals(passes.state().keySet(), step.state().keySet());
    }
}

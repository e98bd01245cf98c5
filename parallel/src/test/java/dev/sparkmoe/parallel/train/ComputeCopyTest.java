package dev.sparkmoe.parallel.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.Bf16Gemms;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.MemoryTracker;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import dev.sparkmoe.parallel.fsdp.FsdpParam;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.function.Function;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * The param-dtype compute copies of a rank that computes with its shards (world 1), on a backend whose GEMMs take
 * bf16 operands ({@link Bf16Gemms}: the CUDA backend at bf16, played on the CPU): every weight read only by GEMMs
 * computes with a bf16 copy of its shard kept from step to step, which the optimizer step writes (exactly the
 * rounded master values), a loaded state replaces, and which costs 2 bytes an element; norms and the embedding
 * compute with the f32 shard, and a backend whose GEMMs take f32 keeps no copy at all.
 */
class ComputeCopyTest {
    @BeforeAll
    static void setUp() throws Exception {
        LayoutEquivalenceTest.loadFixture();
    }

    static TrainerSpec spec() {
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(1e-3, 1e-4, 1, 4, "cosine", 0.9, 0.95,
                1e-8, 0.1, 1.0, 1);
        return new TrainerSpec(LayoutEquivalenceTest.configJson, null, 0, 1, 1, LayoutEquivalenceTest.SEQ, opt,
                "cpu", -1, "bf16");
    }

    static <T> T onOneRank(Backend be, Function<DistributedTrainer, T> body) {
        return InJvmRanks.run(1, Duration.ofSeconds(60), c -> {
            try (DistributedTrainer t = new DistributedTrainer(spec(), c, be, LayoutEquivalenceTest.full)) {
                return body.apply(t);
            }
        }).get(0);
    }

    static List<int[]> batch(int shift) {
        int vocab = dev.sparkmoe.core.model.Qwen3MoeConfig.parse(LayoutEquivalenceTest.configJson).vocabSize();
        List<int[]> out = new ArrayList<>();
        for (int[] s : LayoutEquivalenceTest.batch) {
            int[] r = s.clone();
            for (int i = 0; i < r.length; i++) {
                r[i] = (r[i] + shift) % vocab;
            }
            out.add(r);
        }
        return out;
    }

    /** Asserts that every kept compute copy holds its shard rounded to bf16, bit for bit; returns how many. */
    static int assertCopiesAreTheRoundedShards(DistributedTrainer t) {
        Backend be = t.model().backend();
        int copies = 0;
        for (FsdpParam p : t.shardedParameters()) {
            Tensor copy = p.computeCopy();
            if (copy == null) {
                continue;
            }
            copies++;
            assertEquals(DType.BF16, copy.dtype(), p.parameter().name());
            Tensor rounded = be.empty(DType.BF16, p.shard().shape());
            be.convert(p.shard(), rounded);
            assertArrayEquals(be.download(rounded).floats(), be.download(copy).floats(), p.parameter().name());
            be.release(rounded);
        }
        return copies;
    }

    @Test
    void gemmWeightsComputeWithABf16CopyThatTheOptimizerKeepsCurrent() {
        onOneRank(Bf16Gemms.over(new CpuBackend()), t -> {
            List<String> kept = new ArrayList<>();
            for (FsdpParam p : t.shardedParameters()) {
                String n = p.parameter().name();
                boolean gemmOnly = n.endsWith("_proj.weight") || n.endsWith("mlp.gate.weight")
                        || n.contains(".experts.") || n.equals("lm_head.weight");
                assertEquals(gemmOnly, p.keepsComputeCopy(), n);
                if (p.keepsComputeCopy()) {
                    kept.add(n);
                }
            }
            assertTrue(kept.stream().anyMatch(n -> n.contains(".experts.")), kept.toString());
            assertTrue(kept.stream().anyMatch(n -> n.endsWith("q_proj.weight")), kept.toString());
            for (int step = 0; step < 3; step++) {
                StepMetrics m = t.step(batch(step));
                assertTrue(Double.isFinite(m.loss()), "loss of step " + step);
                // made at the first use, written by each optimizer step since: always the rounded master weights
                assertEquals(kept.size(), assertCopiesAreTheRoundedShards(t), "copies after step " + step);
            }
            return null;
        });
    }

    @Test
    void aLoadedStateReplacesTheCopiesBeforeTheNextStep() {
        // A: two steps, its state saved, then the third step. B: one step on other data (its copies now exist and
        // differ), then A's state loaded and A's third step: the same loss and master weights, bit for bit.
        Object[] a = onOneRank(Bf16Gemms.over(new CpuBackend()), t -> {
            t.step(batch(0));
            t.step(batch(1));
            Map<String, Tensor> state = t.rankState();
            double loss = t.step(batch(2)).loss();
            return new Object[] {state, loss, t.rankState()};
        });
        @SuppressWarnings("unchecked")
        Map<String, Tensor> saved = (Map<String, Tensor>) a[0];
        @SuppressWarnings("unchecked")
        Map<String, Tensor> afterA = (Map<String, Tensor>) a[2];
        Object[] b = onOneRank(Bf16Gemms.over(new CpuBackend()), t -> {
            t.step(batch(7));
            t.loadState(saved);
            double loss = t.step(batch(2)).loss();
            assertCopiesAreTheRoundedShards(t);
            return new Object[] {loss, t.rankState()};
        });
        assertEquals((double) a[1], (double) b[0], 0.0, "loss of the third step after the state was loaded");
        @SuppressWarnings("unchecked")
        Map<String, Tensor> afterB = (Map<String, Tensor>) b[1];
        for (String k : afterA.keySet()) {
            if (k.startsWith("param/")) {
                assertArrayEquals(afterA.get(k).floats(), afterB.get(k).floats(), k);
            }
        }
    }

    @Test
    void theCopiesAreWhatTheGemmsReadAndCostTwoBytesAnElement() {
        record Run(double loss, long live, long copyElements, int copies) {
        }
        Function<Backend, Run> run = inner -> {
            Backend be = MemoryTracker.wrap(inner);
            MemoryTracker mem = MemoryTracker.of(be);
            return onOneRank(be, t -> {
                double loss = t.step(batch(0)).loss();
                long elements = 0;
                int copies = 0;
                for (FsdpParam p : t.shardedParameters()) {
                    if (p.computeCopy() != null) {
                        elements += p.computeCopy().numel();
                        copies++;
                    }
                }
                return new Run(loss, mem.liveBytes(), elements, copies);
            });
        };
        Run f32 = run.apply(new CpuBackend());
        Run bf16 = run.apply(Bf16Gemms.over(new CpuBackend()));
        assertEquals(0, f32.copies(), "GEMMs that take f32 keep no compute copy");
        assertTrue(bf16.copies() > 0);
        assertEquals(f32.live() + 2 * bf16.copyElements(), bf16.live(),
                "bytes live after a step: the f32 run's and 2 bytes for each element of the compute copies");
        assertNotEquals(f32.loss(), bf16.loss(), "the GEMMs read bf16 weights");
        assertEquals(f32.loss(), bf16.loss(), 2e-2 * f32.loss(), "by bf16 rounding only");
    }
}

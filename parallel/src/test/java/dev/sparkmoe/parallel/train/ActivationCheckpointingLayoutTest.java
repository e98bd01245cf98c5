package dev.sparkmoe.parallel.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.sparkmoe.parallel.comm.DeferringCommunicator;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * The trainer's {@code activationCheckpointing} setting at world 1 and under FSDP and expert parallelism (in-JVM
 * ranks, the fixture model, three AdamW steps as in {@link LayoutEquivalenceTest}, collectives deferred until
 * completed): full and selective give the losses, the gathered gradients and the parameters of none at the same
 * layout, bit for bit, with gradient accumulation too; every started collective is completed.
 */
class ActivationCheckpointingLayoutTest {

    @BeforeAll
    static void load() throws Exception {
        LayoutEquivalenceTest.loadFixture();
    }

    static TrainerSpec spec(int dp, int ep, int micro, String mode) {
        TrainerSpec base = LayoutEquivalenceTest.spec(dp, ep);
        TrainerSpec.OptimizerSettings o = base.optimizer();
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(o.lr(), o.minLr(), o.warmupSteps(),
                o.totalSteps(), o.schedule(), o.beta1(), o.beta2(), o.eps(), o.weightDecay(), o.clipNorm(), micro);
        return new TrainerSpec(base.hfConfigJson(), null, base.seed(), dp, ep, base.seqLen(), opt, "cpu", -1, "f32",
                mode);
    }

    static LayoutEquivalenceTest.Result run(int dp, int ep, int micro, String mode) {
        List<Object[]> out = InJvmRanks.run(dp, Duration.ofSeconds(60), c -> {
            DeferringCommunicator d = new DeferringCommunicator(c);
            LayoutEquivalenceTest.Result r = LayoutEquivalenceTest.rank(d, spec(dp, ep, micro, mode),
                    LayoutEquivalenceTest.full);
            return new Object[] {r, d.open()};
        });
        for (Object[] o : out) {
            assertEquals(0, (Integer) o[1], mode + ": started collectives never completed");
        }
        return (LayoutEquivalenceTest.Result) out.get(0)[0];
    }

    @ParameterizedTest(name = "dp_shard={0}, ep={1}, micro-batches={2}")
    @CsvSource({"1,1,1", "2,1,1", "2,2,2", "4,2,1", "4,4,1"})
    void fullAndSelectiveGiveTheBitsOfNone(int dp, int ep, int micro) {
        LayoutEquivalenceTest.Result none = run(dp, ep, micro, "none");
        for (String mode : List.of("full", "selective")) {
            LayoutEquivalenceTest.Result r = run(dp, ep, micro, mode);
            assertArrayEquals(none.lm(), r.lm(), mode + ": lm losses");
            assertArrayEquals(none.aux(), r.aux(), mode + ": aux losses");
            assertEquals(none.grads().keySet(), r.grads().keySet());
            for (String k : none.grads().keySet()) {
                assertArrayEquals(none.grads().get(k).floats(), r.grads().get(k).floats(), mode + ": grad " + k);
                assertArrayEquals(none.params().get(k).floats(), r.params().get(k).floats(), mode + ": param " + k);
            }
        }
    }

    @Test
    void theSettingIsCheckedAndCarriedWithTheSpec() {
        TrainerSpec s = spec(2, 1, 1, "FULL");
        assertEquals("full", s.activationCheckpointing());
        assertEquals("full", s.onDevice("cuda", 1).activationCheckpointing());
        assertEquals("none", LayoutEquivalenceTest.spec(2, 1).activationCheckpointing(), "default");
        assertEquals("selective", s.withActivationCheckpointing("selective").activationCheckpointing());
        IllegalArgumentException e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                () -> s.withActivationCheckpointing("some"));
        org.junit.jupiter.api.Assertions.assertTrue(e.getMessage().contains("'some'"), e.getMessage());
    }
}

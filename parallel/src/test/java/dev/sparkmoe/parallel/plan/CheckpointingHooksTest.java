package dev.sparkmoe.parallel.plan;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.sparkmoe.core.model.ActivationCheckpointing;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.fsdp.FullyShard;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Activation checkpointing under the FSDP plan (with expert parallelism where ep > 1), with the collectives deferred
 * until completed ({@link dev.sparkmoe.parallel.comm.DeferringCommunicator}: a weight read before its gather
 * completed is NaN): the second step's log of module hooks and of started and completed gathers and reductions
 * ({@link HeadUnitTest}'s recording) is the same under full and selective as under none, so FSDP's recorded unit
 * order and its prefetches are unchanged by the recomputed forward (each unit gathered for the recompute is the one
 * its backward gathers, once; its reduce-scatter starts after its backward), and the gradients are the same bits.
 */
class CheckpointingHooksTest {

    @ParameterizedTest(name = "dp_shard={0}, ep={1}, tied={2}")
    @CsvSource({"2,1,false", "4,2,false", "4,2,true"})
    void recomputeKeepsTheUnitsScheduleAndTheGradients(int dp, int ep, boolean tied) throws Exception {
        Qwen3MoeConfig config = HeadUnitTest.config(tied);
        List<int[]> seqs = new ArrayList<>();
        SplittableRandom r = new SplittableRandom(9);
        for (int s = 0; s < dp; s++) {
            int[] seq = new int[HeadUnitTest.SEQ + 1];
            for (int t = 0; t < seq.length; t++) {
                seq[t] = r.nextInt(config.vocabSize());
            }
            seqs.add(seq);
        }
        List<Object[]> none = run(config, dp, ep, seqs, ActivationCheckpointing.NONE);
        for (ActivationCheckpointing mode : List.of(ActivationCheckpointing.FULL, ActivationCheckpointing.SELECTIVE)) {
            List<Object[]> ac = run(config, dp, ep, seqs, mode);
            for (int rank = 0; rank < dp; rank++) {
                assertEquals(none.get(rank)[1], ac.get(rank)[1], mode + ", rank " + rank + ": log of step 2");
                assertEquals(0, (Integer) ac.get(rank)[3], mode + ": started collectives never completed");
                @SuppressWarnings("unchecked")
                Map<String, Tensor> expected = (Map<String, Tensor>) none.get(rank)[2];
                @SuppressWarnings("unchecked")
                Map<String, Tensor> grads = (Map<String, Tensor>) ac.get(rank)[2];
                assertEquals(expected.keySet(), grads.keySet());
                for (String k : expected.keySet()) {
                    assertArrayEquals(expected.get(k).floats(), grads.get(k).floats(), mode + ": grad " + k);
                }
            }
        }
    }

    private static List<Object[]> run(Qwen3MoeConfig config, int dp, int ep, List<int[]> seqs,
                                      ActivationCheckpointing mode) {
        return InJvmRanks.run(dp, Duration.ofSeconds(60), c -> HeadUnitTest.rank(c, config, dp, ep, seqs,
                FullyShard.DEFAULT_PREFETCH, mode));
    }
}

package dev.sparkmoe.spark.testing;

import dev.sparkmoe.gpu.runtime.DefaultRankTrainerFactory;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.train.RankTrainer;
import dev.sparkmoe.parallel.train.RankTrainerFactory;
import dev.sparkmoe.parallel.train.StepMetrics;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

/**
 * The real trainer ({@link DefaultRankTrainerFactory}) with two test hooks: it records the sequences every rank
 * trains on at every step (Spark local mode runs the tasks in the test's JVM), so that a test can replay the exact
 * data order outside Spark, and it can inject a failure through a {@link Faults.Plan}.
 */
public final class RecordingFactory implements RankTrainerFactory {
    private static final long serialVersionUID = 1L;
    /** run id -> rank -> step (1-based) -> sequences. */
    private static final Map<String, Map<Integer, Map<Long, List<int[]>>>> RECORDED = new ConcurrentHashMap<>();
    private static final Map<String, TrainerSpec> SPECS = new ConcurrentHashMap<>();
    private final String runId;
    private final Faults.Plan faults;

    public RecordingFactory(String runId, Faults.Plan faults) {
        this.runId = runId;
        this.faults = faults;
    }

    /** What rank {@code rank} trained on at 1-based step {@code step} of run {@code runId}. */
    public static List<int[]> recorded(String runId, int rank, long step) {
        return RECORDED.get(runId).get(rank).get(step);
    }

    /** The spec the Spark job built for run {@code runId}. */
    public static TrainerSpec spec(String runId) {
        return SPECS.get(runId);
    }

    @Override
    public RankTrainer create(TrainerSpec spec, Communicator world) {
        SPECS.put(runId, spec);
        RankTrainer real = new DefaultRankTrainerFactory().create(spec, world);
        Map<Long, List<int[]>> mine = RECORDED.computeIfAbsent(runId, k -> new ConcurrentHashMap<>())
                .computeIfAbsent(world.rank(), k -> new ConcurrentHashMap<>());
        int rank = world.rank();
        return new ForwardingRankTrainer(real) {
            @Override
            public StepMetrics step(List<int[]> sequences) {
                long step = real.stepsTaken() + 1;
                if (faults != null) {
                    faults.maybeFail(rank, step, "step");
                }
                List<int[]> copy = new ArrayList<>();
                for (int[] s : sequences) {
                    copy.add(s.clone());
                }
                mine.put(step, copy);
                return real.step(sequences);
            }
        };
    }
}

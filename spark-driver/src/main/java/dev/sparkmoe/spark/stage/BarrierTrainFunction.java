package dev.sparkmoe.spark.stage;

import java.util.Iterator;
import java.util.List;
import java.util.Map;
import org.apache.spark.BarrierTaskContext;
import org.apache.spark.api.java.function.FlatMapFunction;
import org.apache.spark.resource.ResourceInformation;
import scala.Tuple2;

/**
 * The body of the barrier stage: one task per rank (rank = partition id), its control plane on
 * {@link BarrierTaskContext}, its work in {@link RankRunner}.
 */
public final class BarrierTrainFunction implements FlatMapFunction<Iterator<Tuple2<Long, int[]>>, RankOutcome> {
    private static final long serialVersionUID = 1L;

    private final JobPlan plan;

    public BarrierTrainFunction(JobPlan plan) {
        this.plan = plan;
    }

    @Override
    public Iterator<RankOutcome> call(Iterator<Tuple2<Long, int[]>> docs) throws Exception {
        BarrierTaskContext ctx = BarrierTaskContext.get();
        RankControl ctl = new SparkRankControl(ctx, plan.runKey());
        RankOutcome out = new RankRunner(plan, ctl).run(docs);
        return List.of(out).iterator();
    }

    /** {@link RankControl} over Spark's barrier task context. */
    static final class SparkRankControl implements RankControl {
        private final BarrierTaskContext ctx;
        private final String key;

        SparkRankControl(BarrierTaskContext ctx, String runKey) {
            this.ctx = ctx;
            this.key = runKey + "/stage-" + ctx.stageId() + "." + ctx.stageAttemptNumber();
        }

        @Override
        public int rank() {
            return ctx.partitionId();
        }

        @Override
        public int worldSize() {
            return ctx.getTaskInfos().length;
        }

        @Override
        public String jobKey() {
            return key;
        }

        @Override
        public String[] allGather(String message) {
            return ctx.allGather(message);
        }

        @Override
        public void barrier() {
            ctx.barrier();
        }

        @Override
        public boolean killed() {
            return ctx.isInterrupted();
        }

        @Override
        public String[] gpus() {
            Map<String, ResourceInformation> r = ctx.resourcesJMap();
            ResourceInformation gpu = r.get("gpu");
            return gpu == null ? new String[0] : gpu.addresses();
        }
    }
}

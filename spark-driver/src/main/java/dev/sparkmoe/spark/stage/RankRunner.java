package dev.sparkmoe.spark.stage;

import com.fasterxml.jackson.databind.ObjectMapper;
import dev.sparkmoe.core.io.HfModelWriter;
import dev.sparkmoe.core.io.OutputDir;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.train.RankTrainer;
import dev.sparkmoe.parallel.train.StepMetrics;
import dev.sparkmoe.parallel.train.TrainerSpec;
import dev.sparkmoe.spark.ckpt.CheckpointMismatchException;
import dev.sparkmoe.spark.ckpt.CheckpointStore;
import dev.sparkmoe.spark.data.SequencePacker;
import dev.sparkmoe.spark.progress.MetricsJson;
import java.io.IOException;
import java.io.OutputStream;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Iterator;
import java.util.List;
import java.util.Optional;
import static java.nio.charset.StandardCharsets.UTF_8;
import org.apache.hadoop.fs.FileSystem;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * One rank of one barrier-stage attempt: packs its documents, agrees with its peers on the step count, connects the
 * world communicator, builds its trainer, resumes from the newest committed checkpoint, steps in lockstep, writes
 * checkpoints and finally (rank 0) the Hugging Face model. No numerics here: the trainer does them.
 */
public final class RankRunner {
    private static final Logger LOG = LoggerFactory.getLogger(RankRunner.class);
    private static final ObjectMapper JSON = new ObjectMapper();

    private final JobPlan plan;
    private final RankControl ctl;

    public RankRunner(JobPlan plan, RankControl ctl) {
        this.plan = plan;
        this.ctl = ctl;
    }

    public RankOutcome run(Iterator<int[]> documents) throws Exception {
        int rank = ctl.rank();
        int world = ctl.worldSize();
        SequencePacker packer = plan.packer();
        List<int[]> sequences = packer.pack(documents);
        int[] order = SequencePacker.order(sequences.size(), plan.seed(), rank, plan.shuffle());

        // every rank must see what the driver validated: same partition contents, same step count
        // one barrier-context round for all start-up facts: where each rank runs, how much data it has
        String[] gathered = ctl.allGather(sequences.size() + " " + WorldConnector.whereAmI());
        List<Long> seen = Arrays.stream(gathered).map(g -> Long.parseLong(g.substring(0, g.indexOf(' ')))).toList();
        String[] where = Arrays.stream(gathered).map(g -> g.substring(g.indexOf(' ') + 1)).toArray(String[]::new);
        if (!seen.equals(plan.rankSequenceCounts())) {
            throw new IllegalStateException("the ranks packed " + seen + " sequences, but the driver's validation "
                    + "counted " + plan.rankSequenceCounts() + ": the input is not deterministic (e.g. a "
                    + "non-deterministic query or files changing under the job); materialize it first");
        }
        long steps = plan.steps();
        int batch = plan.batchSequences();

        TrainerSpec base = plan.spec();
        String[] gpus = ctl.gpus();
        String backend = base.backend();
        int deviceId = -1;
        if (gpus.length > 0 && !"cpu".equals(backend)) {
            deviceId = Integer.parseInt(gpus[0].trim());
            backend = "cuda";
        } else if ("cuda".equals(backend)) {
            throw new IllegalStateException("training.backend = cuda, but Spark gave task " + rank + " no GPU; set "
                    + "spark.task.resource.gpu.amount=1 and spark.executor.resource.gpu.amount (with a discovery "
                    + "script), or use training.backend=auto");
        } else {
            backend = "cpu";
        }
        String device = deviceId >= 0 ? "cuda:" + deviceId : "cpu";
        TrainerSpec spec = base.onDevice(backend, deviceId);

        Duration timeout = Duration.ofSeconds(plan.commTimeoutS());
        Communicator comm = plan.connector().connect(ctl, where, timeout);
        RankTrainer trainer = null;
        try {
            trainer = plan.factory().create(spec, comm);
            CheckpointStore store = plan.store();

            // rank 0 picks the checkpoint, so that every rank loads the same one
            String pick = "";
            if (rank == 0) {
                Optional<CheckpointStore.Manifest> latest = store.latest();
                pick = latest.map(m -> Long.toString(m.step())).orElse("");
            }
            String chosen = new String(comm.broadcastBytes(pick.getBytes(UTF_8), 0), UTF_8);
            List<String> history = new ArrayList<>();
            long start = 0;
            if (!chosen.isEmpty()) {
                CheckpointStore.Manifest m = manifestAt(store, Long.parseLong(chosen));
                checkCompatible(m, world);
                try {
                    trainer.loadState(store.readRank(m, rank));
                } catch (IllegalArgumentException | IllegalStateException e) {
                    throw new CheckpointMismatchException("cannot resume from checkpoint " + store.stepPath(m.step())
                            + ": " + e.getMessage(), e);
                }
                if (trainer.stepsTaken() != m.step()) {
                    throw new IllegalStateException("after loading checkpoint step " + m.step() + " the trainer "
                            + "reports " + trainer.stepsTaken() + " steps taken; its loadState must restore the "
                            + "step counter");
                }
                start = m.step();
                history.addAll(m.metricsJson());
                if (rank == 0) {
                    LOG.info("attempt {}: resuming from checkpoint {} (data position {} sequences per rank)",
                            plan.attempt(), store.stepPath(m.step()), m.sequencesConsumed());
                }
            }
            long resumedFrom = start;

            for (long k = start; k < steps; k++) {
                if (ctl.killed()) {
                    throw new InterruptedException("rank " + rank + " stopped by Spark before step " + (k + 1));
                }
                List<int[]> mine = new ArrayList<>(batch);
                long from = k * batch;
                for (long i = from; i < from + batch && i < sequences.size(); i++) {
                    mine.add(sequences.get(order[(int) i]));
                }
                StepMetrics sm = trainer.step(mine);
                String js = MetricsJson.toJson(sm);
                history.add(js);
                if (rank == 0) {
                    plan.metrics().add(sm);
                    LOG.debug("step {}/{} loss {} lr {} grad_norm {}", sm.step(), steps, sm.loss(), sm.lr(),
                            sm.gradNorm());
                }
                long done = k + 1;
                if (done == steps || (plan.checkpointEvery() > 0 && done % plan.checkpointEvery() == 0)) {
                    checkpoint(trainer, comm, done, history, seen);
                }
            }

            writeModel(trainer);
            comm.barrier();
            return new RankOutcome(rank, resumedFrom, trainer.stepsTaken(), rank == 0 ? history : List.of(), device);
        } catch (Throwable t) {
            WorldConnector.abort(comm, rank, t);
            throw t;
        } finally {
            if (trainer != null) {
                try {
                    trainer.close();
                } catch (RuntimeException e) {
                    LOG.warn("rank {}: closing the trainer failed: {}", rank, e.toString());
                }
            }
            comm.close();
        }
    }

    private static CheckpointStore.Manifest manifestAt(CheckpointStore store, long step) throws IOException {
        Optional<CheckpointStore.Manifest> m = store.latest();
        if (m.isEmpty() || m.get().step() != step) {
            throw new IllegalStateException("checkpoint step " + step + " chosen by rank 0 is no longer the newest "
                    + "complete one in " + store.dir() + " (found " + m.map(x -> "step " + x.step()).orElse("none")
                    + "); is another job writing there?");
        }
        return m.get();
    }

    private void checkCompatible(CheckpointStore.Manifest m, int world) {
        if (m.worldSize() != world || m.ep() != plan.spec().ep()) {
            throw new CheckpointMismatchException("checkpoint " + plan.store().stepPath(m.step()) + " was written with "
                    + "world_size " + m.worldSize() + ", ep " + m.ep() + "; this run has world_size " + world + ", ep "
                    + plan.spec().ep() + ". Resume with the same layout or use another checkpoint.dir");
        }
        if (m.seed() != plan.seed() || m.sequencesPerStep() != plan.batchSequences()
                || !m.rankSequenceCounts().equals(plan.rankSequenceCounts())) {
            throw new CheckpointMismatchException("checkpoint " + plan.store().stepPath(m.step()) + " belongs to other "
                    + "data or settings (seed " + m.seed() + ", batch " + m.sequencesPerStep() + ", sequences per rank "
                    + m.rankSequenceCounts() + "; now seed " + plan.seed() + ", batch " + plan.batchSequences()
                    + ", " + plan.rankSequenceCounts() + "); use another checkpoint.dir to start afresh");
        }
    }

    private void checkpoint(RankTrainer trainer, Communicator comm, long step, List<String> history, List<Long> counts)
            throws Exception {
        CheckpointStore store = plan.store();
        CheckpointStore.FileInfo mine = store.writeRank(step, ctl.jobKey(), ctl.rank(), trainer.rankState());
        byte[][] all = comm.allGatherBytes(JSON.writeValueAsBytes(mine));
        if (ctl.rank() == 0) {
            List<CheckpointStore.FileInfo> files = new ArrayList<>();
            for (byte[] s : all) {
                files.add(JSON.readValue(s, CheckpointStore.FileInfo.class));
            }
            CheckpointStore.Manifest m = new CheckpointStore.Manifest(1, step, ctl.worldSize(), plan.spec().ep(),
                    plan.seed(), plan.batchSequences(), counts, files, new ArrayList<>(history), ctl.jobKey());
            if (ctl.killed()) {
                throw new InterruptedException("rank 0 stopped by Spark before committing checkpoint " + step);
            }
            store.commit(m, plan.keepLast());
            LOG.info("checkpoint {} committed", store.stepPath(step));
        }
        comm.barrier();
    }

    /**
     * Collective. The final model in Hugging Face layout at the plan's model directory, streamed from the trainer one
     * tensor at a time, never whole in any memory: rank 0 writes config.json and the safetensors files (dtype and
     * split as the plan's model format says; the index last) into a temporary directory beside the target, then
     * moves the complete directory into place; the other ranks send it their shards.
     */
    private void writeModel(RankTrainer trainer) throws IOException {
        if (ctl.rank() != 0) {
            trainer.exportModel(null);
            return;
        }
        org.apache.hadoop.fs.Path fin = new org.apache.hadoop.fs.Path(plan.modelDir());
        FileSystem fs = fin.getFileSystem(plan.hadoopConf().get());
        org.apache.hadoop.fs.Path part = new org.apache.hadoop.fs.Path(fin.getParent(),
                "_tmp-" + fin.getName() + "-" + ctl.jobKey().replaceAll("[^A-Za-z0-9_.-]", "_"));
        fs.delete(part, true);
        try (OutputStream os = fs.create(new org.apache.hadoop.fs.Path(part, "config.json"), true)) {
            os.write(trainer.hfConfigJson().getBytes(java.nio.charset.StandardCharsets.UTF_8));
        }
        List<String> files;
        try (HfModelWriter w = new HfModelWriter(hadoopDir(fs, part), trainer.modelTensors(), plan.modelFormat())) {
            trainer.exportModel(w);
            files = w.finish();
        }
        if (fs.exists(fin)) {
            fs.delete(fin, true);
        }
        if (!fs.rename(part, fin)) {
            throw new IOException("could not move " + part + " to " + fin);
        }
        LOG.info("model written to {}: {}", fin, files);
    }

    /**
     * A directory of a Hadoop file system as an {@link OutputDir}: files are written in place (the whole directory is
     * moved into place once complete); a file closed uncommitted is deleted.
     */
    private static OutputDir hadoopDir(FileSystem fs, org.apache.hadoop.fs.Path dir) {
        return name -> {
            org.apache.hadoop.fs.Path p = new org.apache.hadoop.fs.Path(dir, name);
            OutputStream os = fs.create(p, true);
            return new OutputDir.Output() {
                private boolean committed;

                @Override
                public OutputStream stream() {
                    return os;
                }

                @Override
                public void commit() throws IOException {
                    os.close();
                    committed = true;
                }

                @Override
                public void close() throws IOException {
                    if (!committed) {
                        os.close();
                        fs.delete(p, false);
                    }
                }
            };
        };
    }
}

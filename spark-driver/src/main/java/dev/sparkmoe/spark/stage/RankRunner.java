package dev.sparkmoe.spark.stage;

import com.fasterxml.jackson.databind.ObjectMapper;
import dev.sparkmoe.core.io.HfModelWriter;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.CommunicatorException;
import dev.sparkmoe.parallel.train.RankTrainer;
import dev.sparkmoe.parallel.train.StepMetrics;
import dev.sparkmoe.parallel.train.TrainerSpec;
import dev.sparkmoe.spark.ckpt.CheckpointMismatchException;
import dev.sparkmoe.spark.ckpt.CheckpointStore;
import dev.sparkmoe.spark.ckpt.DamagedCheckpointException;
import dev.sparkmoe.spark.ckpt.HadoopOutputDir;
import dev.sparkmoe.spark.data.SequencePacker;
import dev.sparkmoe.spark.progress.MetricsJson;
import dev.sparkmoe.spark.progress.ProgressReporter;
import java.io.IOException;
import java.io.OutputStream;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import static java.nio.charset.StandardCharsets.UTF_8;
import org.apache.hadoop.fs.FileSystem;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import scala.Tuple2;

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

    /**
     * Trains this rank. {@code documents} are the partition's (document index, token ids) pairs in index order;
     * document i belongs to data rank i mod {@code rankSequenceCounts.size()} (the configured world size). A rank
     * of a full-size attempt trains on its own data rank's share; a rank of an attempt resumed on fewer executors
     * takes over every data rank r with r mod world_size == rank, so that each step still trains on the same global
     * batch (the trainer's gradient accumulation covers the extra micro-batches).
     */
    public RankOutcome run(Iterator<Tuple2<Long, int[]>> documents) throws Exception {
        int rank = ctl.rank();
        ProgressReporter reporter = rank == 0 ? ProgressReporter.connect(plan.progress(), plan.attempt(),
                Duration.ofSeconds(10)) : null;
        try {
            return train(documents, reporter);
        } catch (Throwable t) {
            // an OutOfMemoryError would make Spark end the executor (in local mode, the application) before the
            // driver hears why; the trainer is closed by now and its memory free, so it fails the attempt as any
            // other exception of this rank's own would
            RuntimeException oom = t instanceof OutOfMemoryError e ? new RankOutOfMemoryException(rank, e) : null;
            if (isOwn(t)) {
                ProgressReporter r = reporter != null ? reporter
                        : ProgressReporter.connect(plan.progress(), plan.attempt(), Duration.ofSeconds(10));
                try {
                    r.failure(rank, ownFailure(rank, oom != null ? oom : t), Duration.ofSeconds(10));
                } finally {
                    if (r != reporter) {
                        r.close();
                    }
                }
            }
            if (oom != null) {
                throw oom;
            }
            throw t;
        } finally {
            if (reporter != null) {
                reporter.close();
            }
        }
    }

    /** A failure that started on this rank (not a peer's failure seen through a collective, nor a kill by Spark). */
    static boolean isOwn(Throwable t) {
        for (Throwable c = t; c != null; c = c.getCause()) {
            if (c instanceof CommunicatorException || c instanceof InterruptedException
                    || c instanceof org.apache.spark.TaskKilledException) {
                return false;
            }
        }
        return true;
    }

    private static String ownFailure(int rank, Throwable t) {
        String m = String.valueOf(t.getMessage());
        int nl = m.indexOf('\n');
        return "rank " + rank + " failed on its own (" + WorldConnector.whereAmI() + "): "
                + t.getClass().getSimpleName() + ": " + (nl < 0 ? m : m.substring(0, nl));
    }

    private RankOutcome train(Iterator<Tuple2<Long, int[]>> documents, ProgressReporter reporter) throws Exception {
        int rank = ctl.rank();
        int world = ctl.worldSize();
        SequencePacker packer = plan.packer();
        int dataRanks = plan.rankSequenceCounts().size();
        List<Integer> streams = new ArrayList<>();
        for (int r = rank; r < dataRanks; r += world) {
            streams.add(r);
        }
        Map<Integer, List<int[]>> docsOf = new java.util.TreeMap<>();
        for (int r : streams) {
            docsOf.put(r, new ArrayList<>());
        }
        while (documents.hasNext()) {
            Tuple2<Long, int[]> d = documents.next();
            int r = (int) Math.floorMod(d._1(), (long) dataRanks);
            List<int[]> l = docsOf.get(r);
            if (l == null) {
                throw new IllegalStateException("rank " + rank + " of " + world + " was dealt document " + d._1()
                        + " of data rank " + r + ", which it does not train on " + streams);
            }
            l.add(d._2());
        }
        List<List<int[]>> sequences = new ArrayList<>();
        List<int[]> orders = new ArrayList<>();
        StringBuilder counts = new StringBuilder();
        for (int r : streams) {
            List<int[]> seqs = packer.pack(docsOf.get(r).iterator());
            docsOf.put(r, List.of());
            sequences.add(seqs);
            orders.add(SequencePacker.order(seqs.size(), plan.seed(), r, plan.shuffle()));
            counts.append(counts.length() == 0 ? "" : ",").append(seqs.size());
        }

        // every rank must see what the driver validated: same partition contents, same step count
        // one barrier-context round for all start-up facts: where each rank runs, how much data it has
        String[] gathered = ctl.allGather((counts.length() == 0 ? "-" : counts) + " " + WorldConnector.whereAmI());
        Long[] seenByStream = new Long[dataRanks];
        for (int q = 0; q < gathered.length; q++) {
            String c = gathered[q].substring(0, gathered[q].indexOf(' '));
            if (!c.equals("-")) {
                String[] parts = c.split(",");
                for (int i = 0; i < parts.length; i++) {
                    seenByStream[q + i * world] = Long.parseLong(parts[i]);
                }
            }
        }
        List<Long> seen = Arrays.asList(seenByStream);
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
        if (gpus.length > 0) { // one line per executor log; without GPUs (local mode) it would repeat per rank
            LOG.info("rank {} of {}: the task's resources hold gpu {}; device {}, data ranks {}", rank, world,
                    Arrays.toString(gpus), device, streams);
        }

        Duration timeout = Duration.ofSeconds(plan.commTimeoutS());
        Communicator comm = plan.connector().connect(ctl, where, timeout);
        RankTrainer trainer = null;
        try {
            trainer = plan.factory().create(spec, comm);
            CheckpointStore store = plan.store();
            List<String> history = new ArrayList<>();
            long start = resume(trainer, comm, store, history, reporter);
            long resumedFrom = start;

            for (long k = start; k < steps; k++) {
                if (ctl.killed()) {
                    throw new InterruptedException("rank " + rank + " stopped by Spark before step " + (k + 1));
                }
                List<int[]> mine = new ArrayList<>(batch * streams.size());
                long from = k * batch;
                for (int s = 0; s < streams.size(); s++) {
                    List<int[]> seqs = sequences.get(s);
                    int[] order = orders.get(s);
                    for (long i = from; i < from + batch && i < seqs.size(); i++) {
                        mine.add(seqs.get(order[(int) i]));
                    }
                }
                StepMetrics sm = trainer.step(mine);
                String js = MetricsJson.toJson(sm);
                history.add(js);
                if (rank == 0) {
                    plan.metrics().add(sm);
                    reporter.step(sm);
                    LOG.debug("step {}/{} loss {} lr {} grad_norm {}", sm.step(), steps, sm.loss(), sm.lr(),
                            sm.gradNorm());
                }
                long done = k + 1;
                if (done == steps || (plan.checkpointEvery() > 0 && done % plan.checkpointEvery() == 0)) {
                    checkpoint(trainer, comm, done, history, plan.rankSequenceCounts(), reporter);
                }
            }

            if (reporter != null) {
                reporter.flush(Duration.ofSeconds(10)); // every step line before the model's
            }
            writeModel(trainer);
            if (rank == 0) {
                reporter.event(steps, "model written to " + plan.modelDir());
            }
            comm.barrier();
            return new RankOutcome(rank, resumedFrom, trainer.stepsTaken(), rank == 0 ? history : List.of(), device);
        } catch (Throwable t) {
            // peers see this as their failure's cause: never an Error, which Spark would take for a fatal one of theirs
            WorldConnector.abort(comm, rank, t instanceof OutOfMemoryError e ? new RankOutOfMemoryException(rank, e) : t);
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

    /**
     * Collective. Loads the newest committed checkpoint into {@code trainer} (at another layout when the attempt
     * runs on fewer or more ranks than wrote it and the run is elastic) and returns its step (0: none). A checkpoint
     * found damaged on any rank is set aside by rank 0 and the one before it is tried, so that nothing that can be
     * saved is lost.
     */
    private long resume(RankTrainer trainer, Communicator comm, CheckpointStore store, List<String> history,
                        ProgressReporter reporter) throws Exception {
        int rank = ctl.rank();
        int world = ctl.worldSize();
        while (true) {
            // rank 0 picks the checkpoint, so that every rank loads the same one
            String pick = "";
            if (rank == 0) {
                Optional<CheckpointStore.Manifest> latest = store.latest();
                pick = latest.map(m -> Long.toString(m.step())).orElse("");
            }
            String chosen = new String(comm.broadcastBytes(pick.getBytes(UTF_8), 0), UTF_8);
            if (chosen.isEmpty()) {
                return 0;
            }
            CheckpointStore.Manifest m = manifestAt(store, Long.parseLong(chosen));
            boolean reshard = checkCompatible(m, world);
            String damage = "";
            try {
                if (reshard) {
                    trainer.loadResharded(m.worldSize(), r -> {
                        try {
                            return store.readRank(m, r);
                        } catch (IOException e) {
                            throw new java.io.UncheckedIOException(e);
                        }
                    });
                } else {
                    trainer.loadState(store.readRank(m, rank));
                }
            } catch (DamagedCheckpointException e) {
                damage = e.getMessage();
            } catch (java.io.UncheckedIOException e) {
                if (!(e.getCause() instanceof DamagedCheckpointException)) {
                    throw e.getCause();
                }
                damage = e.getCause().getMessage();
            } catch (IllegalArgumentException | IllegalStateException e) {
                throw new CheckpointMismatchException("cannot resume from checkpoint " + store.stepPath(m.step())
                        + ": " + e.getMessage(), e);
            }
            byte[][] all = comm.allGatherBytes(damage.getBytes(UTF_8));
            List<String> damaged = new ArrayList<>();
            for (byte[] d : all) {
                if (d.length > 0) {
                    damaged.add(new String(d, UTF_8));
                }
            }
            if (!damaged.isEmpty()) {
                if (rank == 0) {
                    org.apache.hadoop.fs.Path aside = store.setAside(m.step(), String.join("\n", damaged));
                    String msg = "checkpoint " + store.stepPath(m.step()) + " is damaged (" + damaged.get(0)
                            + (damaged.size() > 1 ? "; and " + (damaged.size() - 1) + " more" : "")
                            + "): set aside as " + aside + ", resuming from the newest intact checkpoint before it";
                    LOG.warn(msg);
                    reporter.event(0, msg);
                }
                comm.barrier(); // nobody picks again before it is out of the way
                continue;
            }
            if (trainer.stepsTaken() != m.step()) {
                throw new IllegalStateException("after loading checkpoint step " + m.step() + " the trainer "
                        + "reports " + trainer.stepsTaken() + " steps taken; its loadState must restore the "
                        + "step counter");
            }
            history.addAll(m.metricsJson());
            if (rank == 0) {
                String msg = "attempt " + plan.attempt() + ": resuming from checkpoint " + store.stepPath(m.step())
                        + " (step " + m.step() + (reshard ? ", written by " + m.worldSize() + " ranks with ep "
                        + m.ep() + ", resharded to " + world + " ranks with ep " + plan.spec().ep() : "") + ")";
                LOG.info(msg);
                for (String js : m.metricsJson()) {
                    reporter.restored(MetricsJson.fromJson(js));
                }
                reporter.event(m.step(), msg);
            }
            return m.step();
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

    /**
     * Whether {@code m} can be resumed by this attempt: true when it must be resharded (written at another layout,
     * allowed when the run is elastic), false when it loads as it is. Other data or settings never resume.
     */
    private boolean checkCompatible(CheckpointStore.Manifest m, int world) {
        boolean sameLayout = m.worldSize() == world && m.ep() == plan.spec().ep();
        if (!sameLayout && !plan.elastic()) {
            throw new CheckpointMismatchException("checkpoint " + plan.store().stepPath(m.step()) + " was written with "
                    + "world_size " + m.worldSize() + ", ep " + m.ep() + "; this run has world_size " + world + ", ep "
                    + plan.spec().ep() + ". Resume with the same layout (or set training.elastic = true to reshard "
                    + "it) or use another checkpoint.dir");
        }
        if (m.seed() != plan.seed() || m.sequencesPerStep() != plan.batchSequences()
                || !m.rankSequenceCounts().equals(plan.rankSequenceCounts())) {
            throw new CheckpointMismatchException("checkpoint " + plan.store().stepPath(m.step()) + " belongs to other "
                    + "data or settings (seed " + m.seed() + ", batch " + m.sequencesPerStep() + ", sequences per rank "
                    + m.rankSequenceCounts() + "; now seed " + plan.seed() + ", batch " + plan.batchSequences()
                    + ", " + plan.rankSequenceCounts() + "); use another checkpoint.dir to start afresh");
        }
        return !sameLayout;
    }

    private void checkpoint(RankTrainer trainer, Communicator comm, long step, List<String> history, List<Long> counts,
                            ProgressReporter reporter) throws Exception {
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
            reporter.flush(Duration.ofSeconds(10)); // the driver prints the steps before this line
            LOG.info("checkpoint {} committed", store.stepPath(step));
            reporter.event(step, "checkpoint " + store.stepPath(step) + " committed");
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
        try (HfModelWriter w = new HfModelWriter(HadoopOutputDir.of(fs, part), trainer.modelTensors(),
                plan.modelFormat())) {
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
}

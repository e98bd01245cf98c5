package dev.sparkmoe.spark;

import dev.sparkmoe.gpu.comm.JobSecret;
import dev.sparkmoe.parallel.train.RankTrainerFactory;
import dev.sparkmoe.parallel.train.StepMetrics;
import dev.sparkmoe.parallel.train.TrainerSpec;
import dev.sparkmoe.spark.ckpt.CheckpointMismatchException;
import dev.sparkmoe.spark.ckpt.CheckpointStore;
import dev.sparkmoe.spark.ckpt.RunFolders;
import dev.sparkmoe.spark.ckpt.SerializableHadoopConf;
import dev.sparkmoe.spark.config.ConfigException;
import dev.sparkmoe.spark.config.ConfigKey;
import dev.sparkmoe.spark.config.ModelSource;
import dev.sparkmoe.spark.config.TrainConfig;
import dev.sparkmoe.spark.data.ByteLevelTokenizer;
import dev.sparkmoe.spark.data.Documents;
import dev.sparkmoe.spark.data.HfBpeTokenizer;
import dev.sparkmoe.spark.data.RankDataStats;
import dev.sparkmoe.spark.data.SequencePacker;
import dev.sparkmoe.spark.data.Tokenizer;
import dev.sparkmoe.spark.data.Tokenizers;
import dev.sparkmoe.spark.progress.MetricsAccumulator;
import dev.sparkmoe.spark.progress.MetricsJson;
import dev.sparkmoe.spark.progress.MetricsPlot;
import dev.sparkmoe.spark.progress.ProgressListener;
import dev.sparkmoe.spark.progress.ProgressReporter;
import dev.sparkmoe.spark.progress.ProgressServer;
import dev.sparkmoe.spark.stage.AttemptLayout;
import dev.sparkmoe.spark.stage.BarrierTrainFunction;
import dev.sparkmoe.spark.stage.JobPlan;
import dev.sparkmoe.spark.stage.RankOutcome;
import dev.sparkmoe.spark.stage.ScalaAdapters;
import dev.sparkmoe.spark.stage.SlotCheck;
import dev.sparkmoe.spark.stage.WorldConnector;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.UUID;
import java.util.function.Consumer;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.Path;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkContext;
import org.apache.spark.SparkStageInfo;
import org.apache.spark.api.java.JavaPairRDD;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.storage.StorageLevel;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The Java API: configure, point at data, {@link Builder#fit()}.
 *
 * <pre>{@code
 * TrainResult r = SparkMoeTrainer.builder()
 *         .set("model.preset", "qwen3-moe-tiny")
 *         .set("layout.world_size", 4)
 *         .set("output.dir", "file:/tmp/run1")
 *         .dataset(spark.read().parquet("hdfs:///corpus"))
 *         .fit();
 * }</pre>
 *
 * The driver validates everything it can (config, layout, slots, data) before launching the barrier stage; a failed
 * stage is retried from the driver up to {@code training.max_attempts} times, each attempt resuming from the newest
 * committed checkpoint; a checkpoint this run cannot resume (a {@code CheckpointMismatchException}) ends the run at
 * once, since every attempt would fail the same way.
 */
public final class SparkMoeTrainer {
    private static final Logger LOG = LoggerFactory.getLogger(SparkMoeTrainer.class);

    private SparkMoeTrainer() {
    }

    public static Builder builder() {
        return new Builder();
    }

    /** Collects settings; nothing runs until {@link #fit()}. */
    public static final class Builder {
        private final TrainConfig.Builder cfg = TrainConfig.builder();
        private TrainConfig config;
        private SparkSession spark;
        private Dataset<Row> dataset;
        private JavaRDD<int[]> rdd;
        private RankTrainerFactory factory;
        private Tokenizer tokenizer;
        private Consumer<StepMetrics> onStep;
        private WorldConnector.Mode transport = WorldConnector.Mode.AUTO;
        private java.io.PrintStream console = System.out;

        /** A loaded config; later {@link #set} calls override its values. */
        public Builder config(TrainConfig c) {
            this.config = c;
            return this;
        }

        public Builder set(String key, Object value) {
            cfg.set(key, value);
            return this;
        }

        public Builder set(ConfigKey key, Object value) {
            cfg.set(key, value);
            return this;
        }

        /** Use this session (otherwise one is created from spark.master / spark-submit and stopped at the end). */
        public Builder spark(SparkSession s) {
            this.spark = s;
            return this;
        }

        /** Training data as a DataFrame (column per data.column). */
        public Builder dataset(Dataset<Row> ds) {
            this.dataset = ds;
            return this;
        }

        /** Training data as documents of token ids. */
        public Builder rdd(JavaRDD<int[]> docs) {
            this.rdd = docs;
            return this;
        }

        /** The trainer of each rank (overrides training.trainer_factory). */
        public Builder trainerFactory(RankTrainerFactory f) {
            this.factory = f;
            return this;
        }

        /** A tokenizer for text data (overrides data.tokenizer). */
        public Builder tokenizer(Tokenizer t) {
            this.tokenizer = t;
            return this;
        }

        /** Called on the driver for every step as its metrics arrive. */
        public Builder onStep(Consumer<StepMetrics> c) {
            this.onStep = c;
            return this;
        }

        /** Where the progress lines go (standard output by default; output.progress=false silences them). */
        public Builder console(java.io.PrintStream out) {
            this.console = out;
            return this;
        }

        /** How ranks talk: AUTO (in-JVM when all ranks share a JVM, else TCP), IN_JVM or TCP. */
        public Builder transport(WorldConnector.Mode m) {
            this.transport = m;
            return this;
        }

        public TrainResult fit() {
            TrainConfig c = config;
            if (c == null) {
                c = cfg.build();
            } else {
                TrainConfig.Builder merged = TrainConfig.builder();
                for (ConfigKey k : ConfigKey.values()) {
                    if (c.has(k)) {
                        merged.set(k, c.get(k));
                    }
                }
                c = merged.build();
            }
            return new Run(this, c).fit();
        }
    }

    /** One fit() call. */
    private static final class Run {
        private final Builder b;
        private final TrainConfig c;
        private final String runId = UUID.randomUUID().toString().substring(0, 8);

        Run(Builder b, TrainConfig c) {
            this.b = b;
            this.c = c;
        }

        TrainResult fit() {
            ModelSource model = ModelSource.resolve(c);
            RankTrainerFactory factory = b.factory != null ? b.factory : loadFactory(c);
            boolean ownSession = b.spark == null;
            SparkSession spark = ownSession ? startSession(c) : b.spark;
            SparkContext sc = spark.sparkContext();
            JavaPairRDD<Long, int[]> byRank = null;
            try {
                int world = c.worldSize();
                SlotCheck.check(sc, world, c.getString(ConfigKey.TRAINING_BACKEND));
                Configuration hconf = sc.hadoopConfiguration();
                RunFolders folders = new RunFolders(c.outputDir(), hconf);
                RunFolders.Run resumeTarget = resumeTarget(folders, hconf);

                Tokenizer tok = b.tokenizer != null ? b.tokenizer : loadTokenizer(c, hconf);
                if (tok.minVocabSize() > model.vocabSize()) {
                    throw new ConfigException(ConfigKey.DATA_TOKENIZER.key(), c.getString(ConfigKey.DATA_TOKENIZER),
                            tok.describe() + " produces ids up to " + (tok.minVocabSize() - 1) + ", but the model's "
                                    + "vocab_size is " + model.vocabSize() + "; use a model with vocab_size >= "
                                    + tok.minVocabSize());
                }
                int eos = c.getInt(ConfigKey.DATA_EOS_ID) >= 0 ? c.getInt(ConfigKey.DATA_EOS_ID)
                        : tok.eosId() >= 0 ? tok.eosId() : Math.max(0, model.eosTokenId());
                if (eos >= model.vocabSize()) {
                    throw new ConfigException(ConfigKey.DATA_EOS_ID.key(), eos, "outside the model's vocabulary "
                            + "(vocab_size " + model.vocabSize() + ")");
                }
                boolean concat = "concat".equals(c.getString(ConfigKey.DATA_PACKING));
                SequencePacker packer = new SequencePacker(c.seqLen(), eos, concat);

                sc.setJobGroup(jobGroup(), "spark-moe " + runId + ": validate data", true);
                JavaRDD<int[]> docs = documents(spark, tok);
                byRank = Documents.dealToRanks(docs, world).persist(StorageLevel.MEMORY_AND_DISK());
                List<RankDataStats> stats = Documents.stats(byRank, packer);
                long steps = validateData(stats, model, packer);
                List<Long> counts = stats.stream().map(RankDataStats::sequences).toList();

                TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(c.lr(),
                        c.getDouble(ConfigKey.TRAINING_MIN_LR), c.getLong(ConfigKey.TRAINING_WARMUP), steps,
                        c.getString(ConfigKey.TRAINING_SCHEDULE), c.getDouble(ConfigKey.TRAINING_BETA1),
                        c.getDouble(ConfigKey.TRAINING_BETA2), c.getDouble(ConfigKey.TRAINING_EPS),
                        c.getDouble(ConfigKey.TRAINING_WEIGHT_DECAY), c.getDouble(ConfigKey.TRAINING_CLIP),
                        c.gradAccum());
                TrainerSpec spec = new TrainerSpec(model.hfConfigJson(), model.initCheckpointDir(), c.seed(), world,
                        c.ep(), c.seqLen(), opt, c.getString(ConfigKey.TRAINING_BACKEND), -1,
                        c.getString(ConfigKey.TRAINING_PRECISION), c.getInt(ConfigKey.TRAINING_FSDP_PREFETCH),
                        c.getInt(ConfigKey.TRAINING_CPU_BLAS_THREADS),
                        c.getString(ConfigKey.TRAINING_ACTIVATION_CHECKPOINTING));
                RunFolders.Run run = claimRunFolder(folders, resumeTarget, hconf);
                CheckpointStore store = new CheckpointStore(c.checkpointDir(run.dir()), hconf);
                String modelDir = run.dir() + "/model";
                JobSecret secret = JobSecret.generate();
                WorldConnector connector = new WorldConnector(b.transport, secret);
                LOG.info("spark-moe run {}: world_size {}, ep {}, {} steps of {} sequences x {} tokens per rank, "
                        + "data {} sequences per rank, checkpoints in {}", runId, world, c.ep(), steps,
                        c.batchSequences(), c.seqLen() + 1, counts, store.dir());
                MetricsPlot plot = new MetricsPlot(run.dir() + "/" + MetricsPlot.FILE_NAME, runId + " (" + run.name()
                        + ")", hconf);
                long continued = announce(run, store, steps, plot);

                java.nio.file.Path metricsFile = c.has(ConfigKey.OUTPUT_METRICS_FILE)
                        ? Paths.get(c.getString(ConfigKey.OUTPUT_METRICS_FILE)) : null;
                int every = c.getInt(ConfigKey.CHECKPOINT_EVERY);
                Consumer<StepMetrics> onStep = m -> {
                    plot.add(m);
                    if (every > 0 && m.step() % every == 0) {
                        plot.drawLater();
                    }
                    if (b.onStep != null) {
                        b.onStep.accept(m);
                    }
                };
                try (ProgressListener progress = new ProgressListener(steps, c.getBool(ConfigKey.OUTPUT_PROGRESS),
                        b.console, metricsFile, onStep, runId);
                     ProgressServer channel = progressServer(sc, secret, progress)) {
                    progress.continues(continued);
                    progress.failuresOf(jobGroup());
                    sc.addSparkListener(progress);
                    try {
                        return attempts(sc, byRank, spec, factory, connector, store, packer, counts, steps, modelDir,
                                hconf, progress, stats, run, channel == null ? null : channel.address());
                    } finally {
                        sc.removeSparkListener(progress);
                        progress.flushEvents();
                        // failed or not, the run ends with its plot drawn from every step the listener reported (and
                        // those of the run it continues), and nothing left drawing into the run folder
                        plot.drawNow();
                        plot.close();
                    }
                } catch (IOException e) {
                    throw new ConfigException(ConfigKey.OUTPUT_METRICS_FILE.key(),
                            c.getString(ConfigKey.OUTPUT_METRICS_FILE), "cannot open it: " + e.getMessage());
                }
            } finally {
                if (byRank != null) {
                    byRank.unpersist(false);
                }
                sc.clearJobGroup();
                if (ownSession) {
                    spark.stop();
                }
            }
        }

        /** The run folder checkpoint.resume names (null: a new one), checked before any data is read. */
        private RunFolders.Run resumeTarget(RunFolders folders, Configuration hconf) {
            String resume = c.getString(ConfigKey.CHECKPOINT_RESUME);
            try {
                RunFolders.Run target = folders.resumeTarget(resume);
                if (target == null && c.has(ConfigKey.CHECKPOINT_DIR)) {
                    Optional<CheckpointStore.Manifest> m = new CheckpointStore(c.checkpointDir(null), hconf).latest();
                    if (m.isPresent()) {
                        throw new ConfigException(ConfigKey.CHECKPOINT_DIR.key(), c.getString(ConfigKey.CHECKPOINT_DIR),
                                "already holds checkpoints of an earlier run (newest: step " + m.get().step() + "); "
                                        + "pass --resume (checkpoint.resume=latest) to continue it, or give this run "
                                        + "another checkpoint.dir (or none: each run folder has its own)");
                    }
                }
                return target;
            } catch (IOException e) {
                throw new ConfigException(ConfigKey.OUTPUT_DIR.key(), c.outputDir(), "cannot list it: "
                        + e.getMessage() + "; point output.dir at a directory this job can read and write");
            }
        }

        /** The folder this run trains in: the one it resumes, or a newly claimed one (after validation passed). */
        private RunFolders.Run claimRunFolder(RunFolders folders, RunFolders.Run resumeTarget, Configuration hconf) {
            if (resumeTarget != null) {
                return resumeTarget;
            }
            try {
                return folders.claimNew("run " + runId + " started " + java.time.Instant.now() + "\n");
            } catch (IOException e) {
                throw new ConfigException(ConfigKey.OUTPUT_DIR.key(), c.outputDir(), "cannot create a run folder: "
                        + e.getMessage() + "; point output.dir at a directory this job can write");
            }
        }

        /**
         * Names the run folder on the console (new or continued) and seeds the plot with the steps resumed; returns
         * the step of the checkpoint a continued run starts from (0: none), whose steps the earlier run reported.
         */
        private long announce(RunFolders.Run run, CheckpointStore store, long steps, MetricsPlot plot) {
            String msg;
            long from = 0;
            if (!run.resumed()) {
                msg = "new run " + run.name() + " in " + run.dir() + " (--resume continues the newest run instead)";
            } else {
                Optional<CheckpointStore.Manifest> m;
                try {
                    m = store.latest();
                } catch (IOException e) {
                    throw new ConfigException(ConfigKey.CHECKPOINT_RESUME.key(),
                            c.getString(ConfigKey.CHECKPOINT_RESUME), "cannot list the checkpoints in " + store.dir()
                                    + ": " + e.getMessage());
                }
                if (m.isEmpty()) {
                    msg = "continuing " + run.name() + " in " + run.dir() + ": it has no committed checkpoint, so "
                            + "training starts at step 1";
                } else {
                    for (String js : m.get().metricsJson()) {
                        plot.add(MetricsJson.fromJson(js));
                    }
                    from = m.get().step();
                    msg = "continuing " + run.name() + " in " + run.dir() + " from its checkpoint at step "
                            + m.get().step() + (m.get().step() >= steps ? " (training.steps = " + steps + " are "
                            + "done: raise training.steps to train further)" : " of " + steps);
                }
            }
            if (c.getBool(ConfigKey.OUTPUT_PROGRESS)) {
                b.console.println("[spark-moe] " + msg);
            } else {
                LOG.info("spark-moe run {}: {}", runId, msg);
            }
            return from;
        }

        private String jobGroup() {
            return "spark-moe-" + runId;
        }

        /** The driver's end of the progress channel, where executors reach the driver; null when it cannot listen. */
        private ProgressServer progressServer(SparkContext sc, JobSecret secret, ProgressListener sink) {
            String host = sc.getConf().get("spark.driver.host", "127.0.0.1");
            String bind = sc.getConf().get("spark.driver.bindAddress", host);
            try {
                return new ProgressServer(host, bind, secret, sink);
            } catch (IOException | RuntimeException e) {
                LOG.warn("cannot open the progress channel on {} ({}); steps will be reported with the executor "
                        + "heartbeats", bind, e.toString());
                return null;
            }
        }

        private TrainResult attempts(SparkContext sc, JavaPairRDD<Long, int[]> byRank, TrainerSpec spec,
                                     RankTrainerFactory factory, WorldConnector connector, CheckpointStore store,
                                     SequencePacker packer, List<Long> counts, long steps, String modelDir,
                                     Configuration hconf, ProgressListener progress, List<RankDataStats> stats,
                                     RunFolders.Run run, ProgressReporter.Address channel) {
            int max = c.getInt(ConfigKey.TRAINING_MAX_ATTEMPTS);
            Throwable last = null;
            String lastWhy = null;
            int attempts = 0;
            boolean mismatch = false;
            AttemptLayout full = new AttemptLayout(c.worldSize(), c.ep(), c.gradAccum());
            int experts = dev.sparkmoe.core.model.Qwen3MoeConfig.parse(spec.hfConfigJson()).numExperts();
            Map<Integer, JavaPairRDD<Long, int[]>> regrouped = new java.util.HashMap<>();
            try {
                for (int attempt = 1; attempt <= max && !mismatch; attempt++) {
                    attempts = attempt;
                    AttemptLayout layout = AttemptLayout.forAttempt(full, attempt, c.getBool(ConfigKey.TRAINING_ELASTIC),
                            1000L * c.getInt(ConfigKey.TRAINING_ELASTIC_WAIT_S), experts, () -> SlotCheck.freeSlots(sc),
                            "spark-moe run " + runId);
                    JavaPairRDD<Long, int[]> data = layout.world() == full.world() ? byRank
                            : regrouped.computeIfAbsent(layout.world(), w -> Documents.regroup(byRank, full.world(), w)
                                    .persist(StorageLevel.MEMORY_AND_DISK()));
                    TrainerSpec attemptSpec = layout.equals(full) ? spec
                            : spec.atLayout(layout.world(), layout.ep(), layout.gradAccum());
                    MetricsAccumulator acc = new MetricsAccumulator();
                    sc.register(acc, "spark-moe metrics (run " + runId + ", attempt " + attempt + ")");
                    if (layout.equals(full)) {
                        progress.watch(acc, attempt);
                    } else {
                        progress.watch(acc, attempt, layout.note(full), layout.fields());
                    }
                    JobPlan plan = new JobPlan(sc.applicationId() + "/" + runId, attempt, attemptSpec, factory,
                            connector, store, c.getInt(ConfigKey.CHECKPOINT_EVERY),
                            c.getInt(ConfigKey.CHECKPOINT_KEEP_LAST), steps, c.batchSequences(), packer,
                            c.getBool(ConfigKey.DATA_SHUFFLE), c.seed(), counts, modelDir,
                            new SerializableHadoopConf(hconf), c.getInt(ConfigKey.TRAINING_COMM_TIMEOUT), acc,
                            c.modelFormat(), channel, c.getBool(ConfigKey.TRAINING_ELASTIC));
                    sc.setJobGroup(jobGroup(), "spark-moe " + runId + ": train " + steps + " steps on "
                            + layout.world() + " ranks (attempt " + attempt + "/" + max + ")", true);
                    try {
                        List<RankOutcome> outs = ScalaAdapters.barrierMapPartitions(data.rdd(),
                                new BarrierTrainFunction(plan), RankOutcome.class).collect();
                        RankOutcome r0 = outs.stream().filter(o -> o.rank() == 0).findFirst().orElseThrow();
                        List<StepMetrics> history = new ArrayList<>();
                        for (String js : r0.metricsJson()) {
                            history.add(MetricsJson.fromJson(js));
                        }
                        for (StepMetrics m : history) {
                            // steps the channel and the heartbeats did not carry; those restored from the checkpoint
                            // were taken by an earlier attempt
                            progress.deliver(m, m.step() <= r0.resumedFrom() ? 0 : attempt);
                        }
                        return new TrainResult(modelDir, history, r0.stepsTaken(), attempt, r0.resumedFrom(),
                                store.dir(), r0.device(), stats, run.dir(), runId);
                    } catch (Exception e) { // SparkException is checked, but Scala throws it anyway
                        last = e;
                        waitForStragglers(sc);
                        String why = progress.takeFailure(3000);
                        lastWhy = why != null ? why : rootMessage(e);
                        // a checkpoint this run cannot resume fails the same way every time: no point in trying again
                        mismatch = lastWhy != null
                                && lastWhy.contains(CheckpointMismatchException.class.getSimpleName());
                        LOG.warn("spark-moe run {}: attempt {}/{} failed{}: {}", runId, attempt, max,
                                mismatch ? " (not retried: the checkpoint does not fit this run)" : "", lastWhy);
                    }
                }
            } finally {
                for (JavaPairRDD<Long, int[]> r : regrouped.values()) {
                    r.unpersist(false);
                }
            }
            String ckpt = resumableCheckpoint(store, mismatch, run);
            String tried = mismatch ? "training failed in attempt " + attempts + " of " + max + " and was not retried "
                    + "(the same checkpoint would fail every attempt)" : "training failed in all " + max
                    + " attempts (training.max_attempts)";
            throw new TrainingFailedException(tried + "; last error: " + lastWhy + ". " + ckpt, last);
        }

        /**
         * What the final error says about the checkpoints: the newest committed one is read whole and called intact
         * only when every file matches its manifest; a damaged one is set aside (renamed, never deleted) and the one
         * before it is looked at.
         */
        private String resumableCheckpoint(CheckpointStore store, boolean notResumable, RunFolders.Run run) {
            StringBuilder aside = new StringBuilder();
            try {
                Optional<CheckpointStore.Manifest> m = store.latest();
                while (m.isPresent()) {
                    Optional<String> damage = store.damage(m.get());
                    if (damage.isEmpty()) {
                        break;
                    }
                    Path moved = store.setAside(m.get().step(), damage.get());
                    aside.append("Checkpoint step ").append(m.get().step()).append(" is damaged (")
                            .append(damage.get()).append(") and was set aside as ").append(moved).append(". ");
                    m = store.latest();
                }
                String resume = c.getString(ConfigKey.CHECKPOINT_RESUME);
                return aside + m.map(x -> notResumable
                        ? "The newest checkpoint, step " + x.step() + " at " + store.stepPath(x.step()) + ", is intact "
                        + "but this run cannot resume from it (" + ConfigKey.CHECKPOINT_RESUME.key() + " = " + resume
                        + "): drop --resume to train in a new run folder, or resume it with the settings and "
                        + "version that wrote it."
                        : "The newest committed checkpoint, step " + x.step() + " at " + store.stepPath(x.step())
                        + ", is intact (every file matches its manifest): run again with --resume=" + run.name()
                        + " (checkpoint.resume) and the same settings to continue from it.")
                        .orElse("No intact checkpoint is left in " + store.dir() + ".");
            } catch (IOException e) {
                return aside + "Could not read the checkpoints in " + store.dir() + ": " + e.getMessage();
            }
        }

        /** A failed job returns before all its tasks have stopped; the next attempt waits for them. */
        private void waitForStragglers(SparkContext sc) {
            long deadline = System.currentTimeMillis() + 1000L * (c.getInt(ConfigKey.TRAINING_COMM_TIMEOUT) + 30);
            while (System.currentTimeMillis() < deadline) {
                int active = 0;
                for (int job : sc.statusTracker().getJobIdsForGroup(jobGroup())) {
                    var info = sc.statusTracker().getJobInfo(job);
                    if (info.isEmpty()) {
                        continue;
                    }
                    for (int stage : info.get().stageIds()) {
                        var si = sc.statusTracker().getStageInfo(stage);
                        if (si.isDefined()) {
                            SparkStageInfo s = si.get();
                            active += s.numActiveTasks();
                        }
                    }
                }
                if (active == 0) {
                    return;
                }
                try {
                    Thread.sleep(100);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    return;
                }
            }
            LOG.warn("tasks of the failed attempt are still running; starting the next attempt anyway");
        }

        private JavaRDD<int[]> documents(SparkSession spark, Tokenizer tok) {
            if (b.rdd != null) {
                return b.rdd;
            }
            Dataset<Row> ds = b.dataset;
            if (ds == null) {
                if (!c.has(ConfigKey.DATA_PATH)) {
                    throw new ConfigException("no training data: set data.path (or pass a Dataset/RDD in the Java "
                            + "API)");
                }
                ds = Documents.read(spark, c.getString(ConfigKey.DATA_PATH), c.getString(ConfigKey.DATA_FORMAT));
            }
            return Documents.tokenIds(ds, c.getString(ConfigKey.DATA_COLUMN), tok);
        }

        private long validateData(List<RankDataStats> stats, ModelSource model, SequencePacker packer) {
            long docs = stats.stream().mapToLong(RankDataStats::docs).sum();
            long tokens = stats.stream().mapToLong(RankDataStats::tokens).sum();
            String src = c.has(ConfigKey.DATA_PATH) && b.dataset == null && b.rdd == null
                    ? "data.path = '" + c.getString(ConfigKey.DATA_PATH) + "'" : "the training data";
            if (docs == 0 || tokens == 0) {
                throw new ConfigException(src + " is empty (" + docs + " rows, " + tokens + " tokens); point "
                        + "data.path at the corpus, or check data.column and the filter that produced it");
            }
            for (RankDataStats s : stats) {
                if (s.docs() > 0 && s.minId() < 0) {
                    throw new ConfigException("token id " + s.minId() + " is negative (in the data dealt to rank "
                            + s.rank() + "); token ids must lie in [0, vocab_size = " + model.vocabSize() + ")");
                }
                if (s.maxId() >= model.vocabSize()) {
                    throw new ConfigException("token id " + s.maxId() + " in row " + s.maxIdDoc() + " is outside "
                            + "the model's vocabulary (vocab_size " + model.vocabSize() + "); use the tokenizer that "
                            + "matches the model, or a model with vocab_size > " + s.maxId());
                }
            }
            int w = packer.window();
            long shortDocs = stats.stream().mapToLong(RankDataStats::shortDocs).sum();
            if ("none".equals(c.getString(ConfigKey.DATA_PACKING)) && shortDocs > 0) {
                RankDataStats first = stats.stream().filter(s -> s.firstShortDoc() >= 0)
                        .min((a, x) -> Long.compare(a.firstShortDoc(), x.firstShortDoc())).orElseThrow();
                throw new ConfigException(shortDocs + " of " + docs + " rows are shorter than the context "
                        + "(training.seq_len + 1 = " + w + " tokens), e.g. row " + first.firstShortDoc() + " with "
                        + first.firstShortLen() + " tokens; with data.packing = none every row must hold a whole "
                        + "sequence: lower training.seq_len, drop short rows, or use data.packing = concat");
            }
            long total = stats.stream().mapToLong(RankDataStats::sequences).sum();
            if (total == 0) {
                throw new ConfigException("the data's " + tokens + " tokens in " + docs + " rows make no sequence of "
                        + "training.seq_len + 1 = " + w + " tokens (every rank's share is shorter than the "
                        + "context); lower training.seq_len or add data");
            }
            int batch = c.batchSequences();
            long avail = Long.MAX_VALUE;
            for (RankDataStats s : stats) {
                if (s.sequences() > 0) {
                    if (s.sequences() < batch) {
                        throw new ConfigException("rank " + s.rank() + " gets only " + s.sequences() + " sequences of "
                                + w + " tokens, fewer than one batch (training.batch_sequences = " + batch + "); "
                                + "lower training.batch_sequences or training.seq_len, or add data");
                    }
                    avail = Math.min(avail, s.sequences() / batch);
                }
            }
            long steps = Math.min(c.steps(), avail);
            if (steps < c.steps()) {
                LOG.warn("the data holds {} full batches on the smallest rank; training {} steps instead of "
                        + "training.steps = {}", avail, steps, c.steps());
            }
            for (RankDataStats s : stats) {
                if (s.sequences() == 0) {
                    LOG.warn("rank {} has no data (fewer documents than ranks); it joins every step with an empty "
                            + "batch", s.rank());
                }
            }
            return steps;
        }
    }

    static RankTrainerFactory loadFactory(TrainConfig c) {
        String name = c.getString(ConfigKey.TRAINING_TRAINER_FACTORY);
        try {
            Object o = Class.forName(name).getDeclaredConstructor().newInstance();
            if (!(o instanceof RankTrainerFactory f)) {
                throw new ConfigException(ConfigKey.TRAINING_TRAINER_FACTORY.key(), name,
                        "does not implement " + RankTrainerFactory.class.getName());
            }
            return f;
        } catch (ClassNotFoundException e) {
            throw new ConfigException(ConfigKey.TRAINING_TRAINER_FACTORY.key(), name, "class not found on the "
                    + "classpath; add the jar that holds it (the real trainer is in spark-moe-gpu-executor) or pass "
                    + "a factory with SparkMoeTrainer.builder().trainerFactory(...)");
        } catch (ReflectiveOperationException e) {
            throw new ConfigException(ConfigKey.TRAINING_TRAINER_FACTORY.key(), name, "cannot instantiate it (needs "
                    + "a public no-argument constructor): " + e);
        }
    }

    static Tokenizer loadTokenizer(TrainConfig c, Configuration hconf) {
        return Tokenizers.load(c.getString(ConfigKey.DATA_TOKENIZER), hconf);
    }

    /** {@link #createSession}, with Spark's start-up failures (a bad master URL or property) named as config errors. */
    static SparkSession startSession(TrainConfig c) {
        try {
            return createSession(c);
        } catch (Exception e) { // SparkException is checked in Java's eyes, and thrown anyway
            String master = c.has(ConfigKey.SPARK_MASTER) ? c.getString(ConfigKey.SPARK_MASTER) : "(from spark-submit, "
                    + "else local[" + c.worldSize() + "])";
            throw new ConfigException(ConfigKey.SPARK_MASTER.key(), master, "Spark did not start: " + rootMessage(e)
                    + "; check spark.master and spark.conf");
        }
    }

    /** A session per the config: master from spark.master, else from spark-submit, else local[world_size]. */
    static SparkSession createSession(TrainConfig c) {
        SparkConf conf = new SparkConf(true);
        if (c.has(ConfigKey.SPARK_MASTER)) {
            conf.setMaster(c.getString(ConfigKey.SPARK_MASTER));
        } else if (!conf.contains("spark.master")) {
            conf.setMaster("local[" + c.worldSize() + "]");
        }
        conf.setAppName(c.getString(ConfigKey.SPARK_APP_NAME));
        conf.setIfMissing("spark.serializer", "org.apache.spark.serializer.KryoSerializer");
        conf.setIfMissing("spark.kryo.registrator", dev.sparkmoe.spark.kryo.SparkMoeKryoRegistrator.class.getName());
        for (Map.Entry<String, Object> e : c.getMap(ConfigKey.SPARK_CONF).entrySet()) {
            conf.set(e.getKey(), String.valueOf(e.getValue()));
        }
        return SparkSession.builder().config(conf).getOrCreate();
    }

    static String firstLine(Throwable t) {
        String m = String.valueOf(t.getMessage());
        int nl = m.indexOf('\n');
        return nl < 0 ? m : m.substring(0, nl);
    }

    /** The message of the innermost cause that has one (Spark wraps task failures several times). */
    static String rootMessage(Throwable t) {
        Throwable cur = t;
        String best = t == null ? "unknown" : firstLine(t);
        while (cur != null) {
            if (cur.getMessage() != null) {
                best = cur.getClass().getSimpleName() + ": " + firstLine(cur);
            }
            cur = cur.getCause();
        }
        return best;
    }
}

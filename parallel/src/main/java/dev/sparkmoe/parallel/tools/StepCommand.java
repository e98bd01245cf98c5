package dev.sparkmoe.parallel.tools;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.io.OutputDir;
import dev.sparkmoe.core.io.SafeTensors;
import dev.sparkmoe.core.io.SafeTensorsWriter;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import dev.sparkmoe.parallel.dtensor.DTensor;
import dev.sparkmoe.parallel.train.DistributedTrainer;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.Callable;
import picocli.CommandLine;

/**
 * {@code spark-moe step}: one forward and backward (and optionally one AdamW step from zero state) on a Hugging Face
 * checkpoint, for people who port or debug models. Labels equal the inputs, shifted inside the loss. With
 * {@code --dp-shard N --ep M} the same step runs on N in-JVM ranks, each reading only its slices of the checkpoint;
 * outputs are full Hub-named tensors, so they can be compared with a single-rank run or with transformers, written
 * as rank 0 gathers them one at a time (the output file's header is computed from their shapes first).
 */
@CommandLine.Command(name = "step", sortOptions = false, usageHelpAutoWidth = true, mixinStandardHelpOptions = true,
        description = {"One forward and backward (and with --adamw one AdamW step from zero state) on a Hugging Face "
                + "checkpoint, with the outputs transformers' fixtures hold, for comparing a port tensor by tensor."})
public final class StepCommand implements Callable<Integer> {

    /** Parsed options. */
    public record Options(Path checkpoint, Path inputs, Path out, Map<String, Double> adamw, int dpShard, int ep) {
    }

    @CommandLine.Option(names = "--checkpoint", required = true, paramLabel = "DIR",
            description = "config.json plus model.safetensors (or a sharded index)")
    Path checkpoint;

    @CommandLine.Option(names = "--inputs", required = true, paramLabel = "FILE",
            description = "safetensors with input_ids I64 [B, T]")
    Path inputs;

    @CommandLine.Option(names = "--out", required = true, paramLabel = "FILE",
            description = {"safetensors written with logits, router_logits, lm_loss, aux_loss, grad.<name> and, with "
                    + "--adamw, param.<name> after one AdamW step from zero state"})
    Path out;

    @CommandLine.Option(names = "--adamw", paramLabel = "lr=..,beta1=..,beta2=..,eps=..,weight_decay=..",
            description = "take one AdamW step from zero state with these settings (unnamed ones: lr=1e-3, "
                    + "beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)")
    String adamw;

    @CommandLine.Option(names = "--dp-shard", paramLabel = "N", defaultValue = "1",
            description = "ranks (in-JVM threads), default ${DEFAULT-VALUE}")
    int dpShard;

    @CommandLine.Option(names = "--ep", paramLabel = "M", defaultValue = "1",
            description = "expert-parallel degree, default ${DEFAULT-VALUE}")
    int ep;

    /** Parses a command line (without the leading {@code step}); a bad one throws {@link Cli.UsageException}. */
    public static Options parse(String[] args) {
        return Cli.parse(new StepCommand(), args).options();
    }

    Options options() {
        if (dpShard < 1 || ep < 1) {
            throw new Cli.UsageException("--dp-shard and --ep must be >= 1, got --dp-shard " + dpShard + " --ep " + ep);
        }
        return new Options(checkpoint, inputs, out, adamw == null ? null : parseAdamw(adamw), dpShard, ep);
    }

    @Override
    public Integer call() throws IOException {
        return run(options());
    }

    static Map<String, Double> parseAdamw(String spec) {
        Map<String, Double> m = new LinkedHashMap<>();
        m.put("lr", 1e-3);
        m.put("beta1", 0.9);
        m.put("beta2", 0.999);
        m.put("eps", 1e-8);
        m.put("weight_decay", 0.01);
        for (String kv : spec.split(",")) {
            if (kv.isBlank()) {
                continue;
            }
            String[] p = kv.split("=", 2);
            String k = p[0].trim();
            if (p.length != 2 || !m.containsKey(k)) {
                throw new Cli.UsageException("--adamw takes lr=..,beta1=..,beta2=..,eps=..,weight_decay=..; "
                        + "cannot read '" + kv + "'");
            }
            try {
                m.put(k, Double.parseDouble(p[1].trim()));
            } catch (NumberFormatException e) {
                throw new Cli.UsageException("--adamw " + k + " must be a number, got '" + p[1] + "'");
            }
        }
        return m;
    }

    /** What a step wrote: its losses and the number of tensors in the output file. */
    public record Summary(double lmLoss, double auxLoss, int tensors) {
    }

    /**
     * Runs the step on {@code o.dpShard} in-JVM ranks, each reading only its slices of the checkpoint, and writes the
     * outputs to {@code o.out} as rank 0 gathers them, one tensor at a time (the file is complete, or absent).
     */
    public static Summary execute(Options o) throws IOException {
        String configJson = Files.readString(o.checkpoint.resolve("config.json"));
        Tensor ids = SafeTensors.read(o.inputs).tensors().get("input_ids");
        if (ids == null || ids.rank() != 2 || ids.isFloating()) {
            throw new IllegalArgumentException(o.inputs + " must hold input_ids, an integer tensor [B, T]"
                    + (ids == null ? "; it has none" : "; got " + ids));
        }
        int batch = ids.dim(0);
        int seqLen = ids.dim(1);
        Map<String, Double> ad = o.adamw != null ? o.adamw : parseAdamw("");
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(ad.get("lr"), ad.get("lr"), 0, 1,
                "constant", ad.get("beta1"), ad.get("beta2"), ad.get("eps"), ad.get("weight_decay"), 0, 1);
        TrainerSpec spec = new TrainerSpec(configJson, o.checkpoint.toString(), 0, o.dpShard, o.ep, seqLen, opt,
                "cpu", -1);
        return InJvmRanks.run(o.dpShard, Duration.ofMinutes(5),
                comm -> rankStep(spec, comm, ids, batch, seqLen, o)).get(0);
    }

    private static Summary rankStep(TrainerSpec spec, Communicator comm, Tensor ids, int batch, int seqLen,
                                    Options o) throws IOException {
        try (DistributedTrainer trainer = new DistributedTrainer(spec, comm, new CpuBackend())) {
            Qwen3MoeConfig config = trainer.config();
            int[] mine = DTensor.chunkRange(batch, comm.size(), comm.rank());
            List<int[]> inputs = new ArrayList<>();
            List<int[]> targets = new ArrayList<>();
            for (int b = mine[0]; b < mine[1]; b++) {
                int[] in = new int[seqLen];
                int[] tg = new int[seqLen];
                for (int t = 0; t < seqLen; t++) {
                    in[t] = Math.toIntExact(ids.longAt(b * seqLen + t));
                    tg[t] = t + 1 < seqLen ? Math.toIntExact(ids.longAt(b * seqLen + t + 1)) : -100;
                }
                inputs.add(in);
                targets.add(tg);
            }
            List<Qwen3MoeModel.Pass> passes = new ArrayList<>();
            DistributedTrainer.Gradients g = trainer.computeGradients(inputs, targets, seqLen, passes::add);
            Qwen3MoeModel.Pass pass = passes.get(0);
            int v = config.vocabSize();
            int e = config.numExperts();
            int layers = pass.routerLogits().size();
            boolean step = o.adamw != null;
            List<TensorSpec> entries = new ArrayList<>();
            entries.add(new TensorSpec("logits", DType.F32, new int[] {batch, seqLen, v}));
            entries.add(new TensorSpec("router_logits", DType.F32, new int[] {layers, batch * seqLen, e}));
            entries.add(new TensorSpec("lm_loss", DType.F32, new int[0]));
            entries.add(new TensorSpec("aux_loss", DType.F32, new int[0]));
            for (TensorSpec t : trainer.modelTensors()) {
                entries.add(t.withName("grad." + t.name()));
            }
            if (step) {
                for (TensorSpec t : trainer.modelTensors()) {
                    entries.add(t.withName("param." + t.name()));
                }
            }
            OutputDir.Output file = comm.rank() == 0 ? OutputDir.local(o.out.toAbsolutePath().getParent())
                    .create(o.out.getFileName().toString()) : null;
            try {
                SafeTensorsWriter w = file == null ? null
                        : new SafeTensorsWriter(file.stream(), entries, Map.of("format", "pt", "producer",
                                "spark-moe step"));
                float[] logits = gatherRows(comm, batch, seqLen * v, pass.logits().floats());
                float[] router = new float[comm.rank() == 0 ? layers * batch * seqLen * e : 0];
                for (int l = 0; l < layers; l++) {
                    float[] all = gatherRows(comm, batch, seqLen * e, pass.routerLogits().get(l).floats());
                    if (all != null) {
                        System.arraycopy(all, 0, router, l * all.length, all.length);
                    }
                }
                if (w != null) {
                    w.write("logits", new int[] {batch, seqLen, v}, logits, 0);
                    w.write("router_logits", new int[] {layers, batch * seqLen, e}, router, 0);
                    w.write("lm_loss", new int[0], new float[] {(float) g.lmLoss()}, 0);
                    w.write("aux_loss", new int[0], new float[] {(float) g.auxLoss()}, 0);
                }
                trainer.exportGradients("grad.", w);
                if (step) {
                    trainer.applyGradients(g.gradNorm());
                    trainer.exportModel("param.", w);
                }
                if (w != null) {
                    w.finish();
                    file.commit();
                }
            } finally {
                if (file != null) {
                    file.close();
                }
            }
            return new Summary(g.lmLoss(), g.auxLoss(), entries.size());
        }
    }

    /**
     * Rank 0 gets every rank's rows in rank order (rank r holds the rows of sequences
     * {@code chunkRange(batch, world, r)}, {@code perSequence} values each); the others send theirs and get null.
     */
    static float[] gatherRows(Communicator comm, int batch, int perSequence, float[] mine) {
        if (comm.rank() != 0) {
            if (mine.length > 0) {
                comm.send(mine, 0, mine.length, 0);
            }
            return null;
        }
        float[] out = new float[batch * perSequence];
        System.arraycopy(mine, 0, out, 0, mine.length);
        for (int r = 1; r < comm.size(); r++) {
            int[] rows = DTensor.chunkRange(batch, comm.size(), r);
            int n = (rows[1] - rows[0]) * perSequence;
            if (n > 0) {
                comm.recv(out, rows[0] * perSequence, n, r);
            }
        }
        return out;
    }

    /** Runs the command line (without the leading {@code step}); returns a process exit code. */
    public static int run(String[] args) throws IOException {
        return run(parse(args));
    }

    static int run(Options o) throws IOException {
        long t0 = System.nanoTime();
        Summary s = execute(o);
        System.out.printf("spark-moe step: lm_loss %.6f  aux_loss %.6f  (%d tensors written to %s in %.1f s,"
                        + " dp_shard=%d ep=%d)%n", (float) s.lmLoss(), (float) s.auxLoss(), s.tensors(), o.out,
                (System.nanoTime() - t0) / 1e9, o.dpShard, o.ep);
        return 0;
    }
}

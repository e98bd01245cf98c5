package dev.sparkmoe.gpu.bench;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.gpu.cuda.CudaBackend;
import dev.sparkmoe.gpu.launch.RankContext;
import dev.sparkmoe.gpu.launch.RankEntry;
import dev.sparkmoe.parallel.tools.Cli;
import dev.sparkmoe.parallel.train.DistributedTrainer;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import picocli.CommandLine;

/**
 * The spark-moe side of the convergence check against PyTorch ({@code gpu-executor/scripts/torch_loss_curve.py}):
 * starts from the weights that script exported, trains on the same byte tokens in the same order with the same
 * AdamW settings (lr 3e-4 constant, betas 0.9/0.95, eps 1e-8, weight decay 0.1, no clipping) and bf16 tensor-core
 * GEMMs, and writes the LM loss of every step. With {@code --torch FILE,FILE,...} (several runs of that script) it
 * decides ({@link LossBand}): the curve must lie inside the band of the PyTorch runs widened by {@code --widen} (1%)
 * at no fewer than {@code --inside} (90%) of the steps after {@code --after} (20), and its final loss inside it; the
 * exit code says which.
 *
 * <p>Options: --init DIR, --data FILE, --out FILE, --steps (200), --batch (4), --seq (2048), --ep (1),
 * --gemm f32|tf32|bf16 (bf16), --torch FILES, --after N, --widen X, --inside X.
 */
public final class LossCurve implements RankEntry {

    /** LossCurve's arguments (after {@code --} on the launcher's command line). */
    @CommandLine.Command(name = "launch -- (LossCurve)", mixinStandardHelpOptions = true, sortOptions = false,
            description = "Train from exported weights on byte tokens and compare the loss curve with PyTorch's.")
    static final class Args {
        @CommandLine.Option(names = "--init", required = true, paramLabel = "DIR", description = "initial weights")
        Path init;
        @CommandLine.Option(names = "--data", required = true, paramLabel = "FILE", description = "training text")
        Path data;
        @CommandLine.Option(names = "--out", required = true, paramLabel = "FILE", description = "losses (JSON)")
        Path out;
        @CommandLine.Option(names = "--steps", paramLabel = "N", description = "steps (${DEFAULT-VALUE})")
        int steps = 200;
        @CommandLine.Option(names = "--batch", paramLabel = "B", description = "sequences per GPU (${DEFAULT-VALUE})")
        int batch = 4;
        @CommandLine.Option(names = "--seq", paramLabel = "T", description = "tokens per sequence (${DEFAULT-VALUE})")
        int seq = 2048;
        @CommandLine.Option(names = "--ep", paramLabel = "M", description = "expert-parallel degree (${DEFAULT-VALUE})")
        int ep = 1;
        @CommandLine.Option(names = "--gemm", paramLabel = "P", description = "f32, tf32 or bf16 (${DEFAULT-VALUE})")
        TrainBench.Gemm gemm = TrainBench.Gemm.bf16;
        @CommandLine.Option(names = "--torch", paramLabel = "FILES", split = ",",
                description = "the losses of PyTorch runs (torch_loss_curve.py), comma-separated: their band")
        List<Path> torch;
        @CommandLine.Option(names = "--after", paramLabel = "N", description = "compare after this step "
                + "(${DEFAULT-VALUE})")
        int after = 20;
        @CommandLine.Option(names = "--widen", paramLabel = "X", description = "relative margin around the band "
                + "(${DEFAULT-VALUE})")
        double widen = 0.01;
        @CommandLine.Option(names = "--inside", paramLabel = "X", description = "share of the steps that must lie "
                + "in the band (${DEFAULT-VALUE})")
        double inside = 0.9;
        @CommandLine.Option(names = "--loss-chunk", paramLabel = "ROWS",
                description = "token rows per chunk of the fused LM-head loss; 0: the model's rule (${DEFAULT-VALUE})")
        int lossChunk = 0;
    }

    @Override
    public int run(RankContext ctx, String[] args) throws Exception {
        Args opts = Cli.parse(new Args(), args);
        Path init = opts.init;
        byte[] text = Files.readAllBytes(opts.data);
        int steps = opts.steps;
        int batch = opts.batch;
        int seq = opts.seq;
        int ep = opts.ep;
        String gemm = opts.gemm.name();
        String configJson = Files.readString(init.resolve("config.json"));
        Qwen3MoeConfig.parse(configJson);
        Backend backend;
        if (ctx.isCuda()) {
            backend = TrainBench.cudaBackend(ctx, gemm);
        } else {
            backend = new CpuBackend();
        }
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(3e-4, 3e-4, 0, steps, "constant", 0.9,
                0.95, 1e-8, 0.1, 0, 1);
        TrainerSpec spec = new TrainerSpec(configJson, init.toString(), 0, ctx.worldSize(), ep, seq, opt,
                ctx.backend(), ctx.device(), TrainBench.precision(gemm));
        List<Object> losses = new ArrayList<>();
        long t0 = System.nanoTime();
        try (DistributedTrainer trainer = new DistributedTrainer(spec, ctx.world(), backend)) {
            trainer.model().setLossChunkRows(opts.lossChunk);
            long span = text.length - seq - 1;
            for (int s = 0; s < steps; s++) {
                List<int[]> rows = new ArrayList<>();
                for (int b = 0; b < batch; b++) {
                    long start = (((long) s * ctx.worldSize() + ctx.rank()) * batch + b) * (seq + 1) % span;
                    int[] r = new int[seq + 1];
                    for (int i = 0; i <= seq; i++) {
                        r[i] = text[(int) start + i] & 0xFF;
                    }
                    rows.add(r);
                }
                losses.add(trainer.step(rows).loss());
            }
        } finally {
            if (backend instanceof CudaBackend) {
                ((CudaBackend) backend).close();
            }
        }
        if (ctx.rank() != 0) {
            return 0;
        }
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("impl", "spark-moe");
        out.put("world", (long) ctx.worldSize());
        out.put("losses", losses);
        out.put("seconds", (System.nanoTime() - t0) / 1e9);
        Files.writeString(opts.out, Json.write(out, false) + "\n");
        System.out.println("spark-moe losses: first " + losses.get(0) + ", last " + losses.get(losses.size() - 1));
        if (opts.torch == null) {
            return 0;
        }
        List<double[]> runs = new ArrayList<>();
        for (Path p : opts.torch) {
            runs.add(losses(Files.readString(p), p.toString()));
        }
        double[] ours = new double[losses.size()];
        for (int i = 0; i < ours.length; i++) {
            ours[i] = (Double) losses.get(i);
        }
        LossBand.Decision d = LossBand.decide(runs, ours, opts.after, opts.widen, opts.inside);
        System.out.println(d.describe(opts.after, opts.widen, opts.inside) + " (" + runs.size() + " PyTorch runs)");
        return d.pass() ? 0 : 1;
    }

    /** The "losses" array of a loss-curve JSON file ({@code what} names it in an error). */
    static double[] losses(String json, String what) {
        Object l = Json.parseObject(json).get("losses");
        if (!(l instanceof List<?> list) || list.isEmpty()) {
            throw new IllegalArgumentException(what + " has no \"losses\" array: write it with torch_loss_curve.py");
        }
        double[] out = new double[list.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = ((Number) list.get(i)).doubleValue();
        }
        return out;
    }
}

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
 * GEMMs, and writes the LM loss of every step. With {@code --torch FILE} it compares the two curves: the relative
 * difference at every step after {@code --after} (20) must stay within {@code --tolerance} (0.02).
 *
 * <p>Options: --init DIR, --data FILE, --out FILE, --steps (200), --batch (4), --seq (2048), --ep (1),
 * --gemm f32|tf32|bf16 (bf16), --torch FILE, --after N, --tolerance X.
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
        @CommandLine.Option(names = "--torch", paramLabel = "FILE", description = "PyTorch's losses to compare with")
        Path torch;
        @CommandLine.Option(names = "--after", paramLabel = "N", description = "compare from this step on "
                + "(${DEFAULT-VALUE})")
        int after = 20;
        @CommandLine.Option(names = "--tolerance", paramLabel = "X", description = "largest relative difference "
                + "(${DEFAULT-VALUE})")
        double tolerance = 0.02;
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
        List<?> ref = (List<?>) Json.parseObject(Files.readString(opts.torch)).get("losses");
        int after = opts.after;
        double tol = opts.tolerance;
        double worst = 0;
        int worstStep = -1;
        for (int s = after; s < Math.min(ref.size(), losses.size()); s++) {
            double a = ((Number) ref.get(s)).doubleValue();
            double d = Math.abs((Double) losses.get(s) - a) / a;
            if (d > worst) {
                worst = d;
                worstStep = s + 1;
            }
        }
        System.out.printf("loss curve vs PyTorch after step %d: worst relative difference %.4f at step %d (%s %.2f)%n",
                after, worst, worstStep, worst <= tol ? "within" : "OVER", tol);
        return worst <= tol ? 0 : 1;
    }
}

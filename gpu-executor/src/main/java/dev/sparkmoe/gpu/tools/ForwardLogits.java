package dev.sparkmoe.gpu.tools;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.io.HfCheckpoint;
import dev.sparkmoe.core.io.SafeTensors;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.core.model.StatsReducer;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.gpu.cuda.CudaBackend;
import dev.sparkmoe.gpu.runtime.Backends;
import dev.sparkmoe.parallel.tools.Cli;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.io.PrintStream;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Map;
import java.util.concurrent.Callable;
import picocli.CommandLine;

/**
 * The logits of a Hugging Face checkpoint (config.json and model.safetensors, e.g. a Spark job's final model) on given
 * token ids, computed by spark-moe's forward pass on the GPU (CUDA backend, exact f32 products) or, without one, on
 * the CPU: what a transformers logits check compares against ({@code gpu-executor/scripts/hf_logits_check.py}).
 *
 * <pre>
 * java -cp 'lib/*' dev.sparkmoe.gpu.tools.ForwardLogits --checkpoint DIR --inputs FILE --out FILE [--backend B]
 * </pre>
 * Its command line is parsed as every spark-moe command's is ({@link Cli}): {@code --help}, exit 2 with an
 * {@code error:} line for a bad one, exit 1 when it fails.
 */
public final class ForwardLogits {
    private ForwardLogits() {
    }

    /** The command line. */
    @CommandLine.Command(name = "ForwardLogits", mixinStandardHelpOptions = true,
            description = "Logits of a Hugging Face checkpoint on given token ids, by spark-moe's forward pass.")
    static final class Command implements Callable<Integer> {
        private final PrintStream out;

        @CommandLine.Option(names = "--checkpoint", required = true, paramLabel = "DIR",
                description = "config.json and the safetensors weights (one file, or several and their index)")
        Path checkpoint;

        @CommandLine.Option(names = "--inputs", required = true, paramLabel = "FILE",
                description = "safetensors with input_ids (I64 [B, T])")
        Path inputs;

        @CommandLine.Option(names = "--out", required = true, paramLabel = "FILE",
                description = "safetensors written with logits (F32 [B, T, V])")
        Path outFile;

        @CommandLine.Option(names = "--backend", paramLabel = "B", defaultValue = "auto",
                description = "auto (cuda when a GPU is usable), cuda or cpu (default ${DEFAULT-VALUE})")
        String backend;

        Command(PrintStream out) {
            this.out = out;
        }

        @Override
        public Integer call() throws Exception {
            Tensor ids = SafeTensors.read(inputs).tensors().get("input_ids");
            if (ids == null || ids.shape().length != 2) {
                throw new Cli.UsageException("--inputs " + inputs + " must hold input_ids of shape [B, T]"
                        + (ids == null ? ", and has no tensor of that name" : ", not " + Arrays.toString(ids.shape())));
            }
            Backend be = Backends.create(Backends.effectiveChoice(backend), 0, TrainerSpec.DEFAULT_CPU_BLAS_THREADS,
                    true);
            try {
                if (be instanceof CudaBackend cuda) {
                    cuda.setGemmPrecision(CudaBackend.GemmPrecision.F32);
                }
                Tensor logits = logits(checkpoint, ids, be);
                SafeTensors.write(outFile, Map.of("logits", logits), HfCheckpoint.FILE_METADATA);
                out.println("logits " + Arrays.toString(logits.shape()) + " on " + be.name() + " written to "
                        + outFile);
                return Cli.OK;
            } finally {
                if (be instanceof CudaBackend cuda) {
                    cuda.close();
                }
            }
        }
    }

    public static void main(String[] args) {
        Cli.exit(run(args, System.out, System.err));
    }

    /** Runs the command; returns its exit code. */
    public static int run(String[] args, PrintStream out, PrintStream err) {
        return Cli.execute(new Command(out), args, out, err);
    }

    /** Logits [B, T, V] of {@code ids} (I64 [B, T]) under the checkpoint in {@code dir}. */
    static Tensor logits(Path dir, Tensor ids, Backend backend) throws java.io.IOException {
        Qwen3MoeConfig config = Qwen3MoeConfig.load(dir.resolve("config.json"));
        Qwen3MoeModel model = new Qwen3MoeModel(config, backend);
        model.loadState(HfCheckpoint.loadStacked(dir, config.numExperts()));
        int b = ids.shape()[0];
        int t = ids.shape()[1];
        int[] in = new int[b * t];
        int[] targets = new int[b * t];
        for (int i = 0; i < in.length; i++) {
            in[i] = (int) ids.longAt(i);
            targets[i] = (i + 1) % t == 0 ? -100 : (int) ids.longAt(i + 1);
        }
        try (Backend.Scope scope = backend.openScope()) {
            Qwen3MoeModel.Pass pass = model.forward(in, targets, b, t, 1.0, 0.0, StatsReducer.LOCAL, true);
            Tensor host = backend.download(pass.logits());
            return Tensor.of(host.floats().clone(), b, t, config.vocabSize());
        }
    }
}

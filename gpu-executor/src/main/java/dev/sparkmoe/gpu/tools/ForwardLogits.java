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
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The logits of a Hugging Face checkpoint (config.json and model.safetensors, e.g. a Spark job's final model) on given
 * token ids, computed by spark-moe's forward pass on the GPU (CUDA backend, exact f32 products) or, without one, on
 * the CPU: what a transformers logits check compares against ({@code gpu-executor/scripts/hf_logits_check.py}).
 *
 * <pre>
 * java -cp 'lib/*' dev.sparkmoe.gpu.tools.ForwardLogits --checkpoint DIR --inputs FILE --out FILE [--backend B]
 *   --inputs: safetensors with input_ids (I64 [B, T]); --out: safetensors with logits (F32 [B, T, V]);
 *   --backend: auto (default: cuda when a GPU is usable), cuda or cpu
 * </pre>
 */
public final class ForwardLogits {
    private ForwardLogits() {
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> o = new LinkedHashMap<>();
        for (int i = 0; i < args.length; i++) {
            if (!args[i].startsWith("--") || i + 1 >= args.length) {
                throw new IllegalArgumentException("usage: --checkpoint DIR --inputs FILE --out FILE [--backend B]; "
                        + "cannot read '" + args[i] + "'");
            }
            o.put(args[i].substring(2), args[++i]);
        }
        for (String k : new String[] {"checkpoint", "inputs", "out"}) {
            if (!o.containsKey(k)) {
                throw new IllegalArgumentException("--" + k + " is required: --checkpoint DIR --inputs FILE --out "
                        + "FILE [--backend auto|cuda|cpu]");
            }
        }
        Path dir = Path.of(o.get("checkpoint"));
        Tensor ids = SafeTensors.read(Path.of(o.get("inputs"))).tensors().get("input_ids");
        if (ids == null || ids.shape().length != 2) {
            throw new IllegalArgumentException(o.get("inputs") + " must hold input_ids of shape [B, T]");
        }
        Backend backend = Backends.create(o.getOrDefault("backend", "auto"), 0);
        try {
            if (backend instanceof CudaBackend cuda) {
                cuda.setGemmPrecision(CudaBackend.GemmPrecision.F32);
            }
            Tensor logits = logits(dir, ids, backend);
            SafeTensors.write(Path.of(o.get("out")), Map.of("logits", logits), HfCheckpoint.FILE_METADATA);
            System.out.println("logits " + java.util.Arrays.toString(logits.shape()) + " on " + backend.name()
                    + " written to " + o.get("out"));
        } finally {
            if (backend instanceof CudaBackend cuda) {
                cuda.close();
            }
        }
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

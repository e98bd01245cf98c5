package dev.sparkmoe.parallel.train;

import dev.sparkmoe.core.io.HfCheckpoint;
import dev.sparkmoe.core.io.HfModelWriter;
import dev.sparkmoe.core.io.ModelFormat;
import dev.sparkmoe.core.io.OutputDir;
import dev.sparkmoe.core.io.SafeTensors;
import dev.sparkmoe.core.io.WeightSource;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.core.model.WeightInit;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Region;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;

/**
 * A Hugging Face checkpoint of a randomly initialised Qwen3-MoE, written with our own streaming writer one tensor at a
 * time (never whole in memory): Hub naming (per-expert tensors), values from {@link WeightInit} rounded to bf16 so that
 * a bf16 and an f32 save of one seed hold the same values. For the tests, and for the memory measurement of
 * {@code spark-moe step} (see {@link #main}).
 */
public final class SyntheticCheckpoint {
    private SyntheticCheckpoint() {
    }

    /** The tensors of the checkpoint, in the order they are written: the model's parameters, experts one by one. */
    static List<TensorSpec> hubTensors(Qwen3MoeConfig config) {
        List<TensorSpec> out = new ArrayList<>();
        for (TensorSpec p : Qwen3MoeModel.unmaterialised(config, null).parameterSpecs()) {
            if (HfCheckpoint.perExpertName(p.name(), 0) != null) {
                for (int e = 0; e < p.dim(0); e++) {
                    out.add(new TensorSpec(HfCheckpoint.perExpertName(p.name(), e), DType.F32,
                            new int[] {p.dim(1), p.dim(2)}));
                }
            } else {
                out.add(p);
            }
        }
        return out;
    }

    /** Writes config.json and the weights of {@code config} for {@code seed} into {@code dir}, stored as {@code format}. */
    public static void write(Path dir, Qwen3MoeConfig config, long seed, ModelFormat format) throws IOException {
        Files.createDirectories(dir);
        Files.writeString(dir.resolve("config.json"), config.toJson());
        List<TensorSpec> stacked = Qwen3MoeModel.unmaterialised(config, null).parameterSpecs();
        WeightSource init = WeightInit.source(stacked, seed, 0.02);
        try (HfModelWriter w = new HfModelWriter(OutputDir.local(dir), hubTensors(config), format)) {
            for (TensorSpec p : stacked) {
                boolean experts = HfCheckpoint.perExpertName(p.name(), 0) != null;
                int pieces = experts ? p.dim(0) : 1;
                int[] shape = experts ? new int[] {p.dim(1), p.dim(2)} : p.shape();
                float[] values = new float[(int) Tensor.numel(shape)];
                for (int e = 0; e < pieces; e++) {
                    int[][] box = Region.whole(p.shape()).box();
                    if (experts) {
                        box[0] = new int[] {e, e + 1};
                    }
                    init.read(p.name(), new Region(p.shape(), box), 0, values.length, values, 0);
                    for (int i = 0; i < values.length; i++) {
                        values[i] = DType.roundToBf16(values[i]);
                    }
                    w.write(experts ? HfCheckpoint.perExpertName(p.name(), e) : p.name(), shape, values, 0);
                }
            }
            w.finish();
        }
    }

    /** The smallest maximum shard size that splits the checkpoint of {@code config} into at most {@code files}. */
    public static long maxShardFor(Qwen3MoeConfig config, DType dtype, int files) {
        List<TensorSpec> stored = new ArrayList<>();
        long total = 0;
        for (TensorSpec t : hubTensors(config)) {
            stored.add(t.withDtype(dtype));
            total += t.withDtype(dtype).byteSize();
        }
        long lo = 1;
        long hi = total;
        while (lo < hi) {
            long mid = (lo + hi) >>> 1;
            if (HfModelWriter.split(stored, mid).size() <= files) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        return lo;
    }

    /** input_ids I64 [batch, seq] drawn uniformly from the vocabulary. */
    public static void writeInputs(Path file, int batch, int seq, int vocab, long seed) throws IOException {
        SplittableRandom r = new SplittableRandom(seed);
        long[] ids = new long[batch * seq];
        for (int i = 0; i < ids.length; i++) {
            ids[i] = r.nextInt(vocab);
        }
        SafeTensors.write(file, Map.of("input_ids", Tensor.ofLongs(ids, batch, seq)), Map.of("format", "pt"));
    }

    /**
     * Writes the checkpoint of the {@code spark-moe step} memory measurement: {@code DIR [hidden layers experts
     * moe_intermediate vocab files batch seq]}, by default hidden 512, 8 layers, 64 experts of 96, vocab 32000
     * (112M parameters), bf16 over 4 files, and {@code DIR/inputs.safetensors} of 4 x 128 ids.
     */
    public static void main(String[] args) throws IOException {
        Path dir = Path.of(args[0]);
        int[] a = {512, 8, 64, 96, 32000, 4, 4, 128};
        for (int i = 1; i < args.length && i <= a.length; i++) {
            a[i - 1] = Integer.parseInt(args[i]);
        }
        Qwen3MoeConfig config = Qwen3MoeConfig.builder().hiddenSize(a[0]).numHiddenLayers(a[1]).numExperts(a[2])
                .moeIntermediateSize(a[3]).vocabSize(a[4]).intermediateSize(4 * a[0]).numAttentionHeads(8)
                .numKeyValueHeads(4).headDim(a[0] / 8).numExpertsPerTok(8).maxPositionEmbeddings(4096)
                .ropeTheta(1e6).rmsNormEps(1e-6).build();
        long params = 0;
        for (TensorSpec t : hubTensors(config)) {
            params += t.numel();
        }
        long max = maxShardFor(config, DType.BF16, a[5]);
        write(dir, config, 1, new ModelFormat(DType.BF16, max));
        writeInputs(dir.resolve("inputs.safetensors"), a[6], a[7], a[4], 2);
        System.out.printf("%s: %,d parameters, bf16 in %d files (max shard %,d bytes), inputs %d x %d%n", dir, params,
                a[5], max, a[6], a[7]);
    }
}

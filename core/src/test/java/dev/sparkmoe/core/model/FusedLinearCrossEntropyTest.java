package dev.sparkmoe.core.model;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.Bf16Gemms;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.MemoryTracker;
import dev.sparkmoe.core.io.HfCheckpoint;
import dev.sparkmoe.core.io.SafeTensors;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The LM head and cross-entropy fused and chunked ({@link FusedLinearCrossEntropy}) against the unfused path (the
 * whole [N, V] logits, the cross-entropy, then the two gradient GEMMs, written here with the same backend ops): the
 * same loss, logits and gradients for every chunk size, an uneven last chunk and ignored rows included, while no
 * [N, V] tensor is ever allocated; then the whole model with small chunks against the Hugging Face fixtures, and
 * with tied embeddings against one chunk.
 */
class FusedLinearCrossEntropyTest {
    static final int N = 11;
    static final int H = 8;
    static final int V = 37;

    /** The unfused loss: loss sum, logits [N, V], dHidden [N, H], dW [V, H]. */
    record Unfused(double loss, Tensor logits, Tensor dHidden, Tensor dW) {
    }

    static Unfused unfused(Backend be, Tensor hidden, Tensor targets, Tensor w, float scale) {
        Tensor logits = be.zeros(DType.F32, N, V);
        be.gemm(false, true, N, V, H, 1f, hidden, 0, H, w, 0, H, 0f, logits, 0, V);
        Tensor dLogits = be.zeros(DType.F32, N, V);
        double loss = be.crossEntropy(logits, targets, N, V, scale, dLogits);
        Tensor dHidden = be.zeros(DType.F32, N, H);
        be.gemm(false, false, N, H, V, 1f, dLogits, 0, V, w, 0, H, 0f, dHidden, 0, H);
        Tensor dW = be.zeros(DType.F32, V, H);
        be.gemm(true, false, V, H, N, 1f, dLogits, 0, V, hidden, 0, H, 0f, dW, 0, H);
        return new Unfused(loss, logits, dHidden, dW);
    }

    static Tensor random(SplittableRandom r, int... shape) {
        float[] f = new float[(int) Tensor.numel(shape)];
        for (int i = 0; i < f.length; i++) {
            f[i] = (float) (r.nextDouble() * 2 - 1);
        }
        return Tensor.of(f, shape);
    }

    static int[] targets(SplittableRandom r) {
        int[] t = new int[N];
        for (int i = 0; i < N; i++) {
            t[i] = r.nextInt(V);
        }
        t[3] = -100; // ignored rows, one of them the last: their gradient rows are zero
        t[N - 1] = -100;
        return t;
    }

    @ParameterizedTest(name = "rows per chunk {0}")
    @ValueSource(ints = {1, 3, 4, 0, 11, 100})
    void everyChunkSizeGivesTheUnfusedLossLogitsAndGradients(int rows) {
        Backend be = MemoryTracker.wrap(new CpuBackend());
        MemoryTracker mem = MemoryTracker.of(be);
        SplittableRandom r = new SplittableRandom(17);
        Tensor hidden = be.upload(random(r, N, H));
        Parameter w = new Parameter("lm_head.weight", be.upload(random(r, V, H)), be);
        Tensor targets = be.upload(Tensor.ofInts(targets(r), N));
        float scale = 1f / 9;
        Unfused ref = unfused(new CpuBackend(), hidden, targets, w.value(), scale);

        long before = mem.liveBytes();
        mem.resetPeak();
        LmHeadLoss.Result out = FusedLinearCrossEntropy.run(be, hidden, targets, N, w, scale, true, true,
                rows);
        int chunk = LmHeadLoss.chunkRows(N, H, V, rows);
        assertEquals(rows == 0 ? H : Math.min(rows, N), chunk);
        // held at the peak: the retained logits, dHidden and dW (the results), one chunk of logits and of targets
        long results = 4L * (N * V + N * H + V * H);
        assertEquals(results + 4L * chunk * V + 4L * chunk, mem.peakBytes() - before,
                "peak bytes of the fused loss (chunk " + chunk + ")");
        assertEquals(results, mem.liveBytes() - before, "bytes left: the results only");

        // f32 logits: a GEMM of fewer rows may sum in another order (OpenBLAS picks its kernel by shape)
        assertEquals(ref.loss, out.lossSum(), 1e-6 * ref.loss, "loss");
        Fixtures.assertClose("logits", ref.logits, out.logits(), 1e-6);
        Fixtures.assertClose("dHidden", ref.dHidden, out.dHidden(), 1e-6);
        Fixtures.assertClose("dW", ref.dW, out.dWeight(), 1e-6);
        for (int j = 0; j < H; j++) { // an ignored row's gradient is exactly zero
            assertEquals(0f, out.dHidden().floats()[3 * H + j]);
            assertEquals(0f, out.dHidden().floats()[(N - 1) * H + j]);
        }
        assertTrue(!w.hasGrad(), "the forward pass must leave the parameter's gradient alone");
    }

    /**
     * A backend whose GEMMs take bf16 operands ({@link Backend#gemmDType}: CUDA at bf16 precision), played by the CPU
     * backend with that one answer changed: the loss reads the weight and the input as bf16 copies and the logits
     * GEMM writes each chunk in bf16, so its loss is the f32 path's on inputs rounded to bf16 with the logits rounded
     * to bf16 once; the gradients are those of the chunk's gradient written over the bf16 logits in bf16; the copies
     * and the chunk are BF16 tensors of 2 bytes an element, all given back.
     */
    @ParameterizedTest(name = "rows per chunk {0}")
    @ValueSource(ints = {3, 0})
    void bf16GemmOperandsRoundTheInputsAndTheChunkGradientOnly(int rows) {
        Backend cpu = new CpuBackend();
        Backend be = MemoryTracker.wrap(Bf16Gemms.over(cpu));
        MemoryTracker mem = MemoryTracker.of(be);
        SplittableRandom r = new SplittableRandom(23);
        Tensor hidden = random(r, N, H);
        Tensor w = random(r, V, H);
        Tensor targets = Tensor.ofInts(targets(r), N);
        float scale = 1f / 9;
        Tensor hidden16 = roundedCopy(hidden);
        Tensor w16 = roundedCopy(w);
        Unfused rounded = unfused(cpu, hidden16, targets, w16, scale);
        Unfused exact = unfused(cpu, hidden, targets, w, scale);
        // the logits rounded to bf16 once, their gradient rounded to bf16 (the cross-entropy writing a BF16 tensor)
        Tensor logits16 = roundedCopy(rounded.logits);
        Tensor dLogits16 = Tensor.zeros(DType.BF16, N, V);
        double loss16 = cpu.crossEntropy(logits16, targets, N, V, scale, dLogits16);
        assertTrue(Math.abs(loss16 - rounded.loss) > 0, "the logits were rounded");
        for (float v : dLogits16.floats()) {
            assertEquals(DType.roundToBf16(v), v, "a BF16 gradient holds bf16 values");
        }
        Tensor dHidden16 = Tensor.zeros(DType.F32, N, H);
        cpu.gemm(false, false, N, H, V, 1f, dLogits16, 0, V, w16, 0, H, 0f, dHidden16, 0, H);
        Tensor dW16 = Tensor.zeros(DType.F32, V, H);
        cpu.gemm(true, false, V, H, N, 1f, dLogits16, 0, V, hidden16, 0, H, 0f, dW16, 0, H);

        long before = mem.liveBytes();
        mem.resetPeak();
        LmHeadLoss.Result out = FusedLinearCrossEntropy.run(be, hidden, targets, N, w, scale, true, false, rows);
        int chunk = LmHeadLoss.chunkRows(N, H, V, rows);
        long results = 4L * (N * H + V * H);
        // at the peak: the results, the bf16 copies of the weight and the input, the bf16 logits chunk (its
        // gradient written over it) and the chunk's targets
        assertEquals(results + 2L * (V * H + N * H) + 2L * chunk * V + 4L * chunk,
                mem.peakBytes() - before, "peak bytes of the fused loss on bf16 operands (chunk " + chunk + ")");
        assertEquals(results, mem.liveBytes() - before, "bytes left: the results only");

        // a chunk's GEMM may sum in another order than the whole one (OpenBLAS picks its kernel by shape), which can
        // move a logit by one bf16 step
        assertEquals(loss16, out.lossSum(), 1e-6 * loss16, "loss: the f32 path's on rounded inputs and logits");
        assertTrue(Math.abs(exact.loss - out.lossSum()) > 0, "the inputs were rounded");
        Fixtures.assertClose("dHidden", dHidden16, out.dHidden(), 1e-3);
        Fixtures.assertClose("dW", dW16, out.dWeight(), 1e-3);
        Fixtures.assertClose("dHidden against the unrounded gradient", rounded.dHidden, out.dHidden(), 1e-2);
        assertTrue(!out.dWeight().bitwiseEquals(rounded.dW), "the chunk's gradient was rounded to bf16");
    }

    static Tensor roundedCopy(Tensor t) {
        float[] f = t.floats().clone();
        for (int i = 0; i < f.length; i++) {
            f[i] = DType.roundToBf16(f[i]);
        }
        return Tensor.of(f, t.shape());
    }

    @Test
    void withoutGradientsOnlyTheLossAndNoRowsAtAll() {
        Backend be = new CpuBackend();
        SplittableRandom r = new SplittableRandom(5);
        Tensor hidden = random(r, N, H);
        Parameter w = new Parameter("lm_head.weight", random(r, V, H), be);
        Tensor targets = Tensor.ofInts(targets(r), N);
        Unfused ref = unfused(be, hidden, targets, w.value(), 1f);
        LmHeadLoss.Result out = FusedLinearCrossEntropy.run(be, hidden, targets, N, w, 0f, false, false,
                4);
        assertEquals(ref.loss, out.lossSum(), 1e-6 * ref.loss);
        assertNull(out.dHidden());
        assertNull(out.dWeight());
        assertNull(out.logits());

        // a rank without tokens: no loss, a zero weight gradient
        LmHeadLoss.Result empty = FusedLinearCrossEntropy.run(be, be.zeros(DType.F32, 0, H),
                be.zeros(DType.I32, 0), 0, w, 1f, true, false, 0);
        assertEquals(0.0, empty.lossSum());
        assertEquals(0.0, empty.dWeight().maxAbs());
        assertEquals(List.of(0, H), List.of(empty.dHidden().dim(0), empty.dHidden().dim(1)));
    }

    @Test
    void chunkRowsFollowTheHiddenSizeBound() {
        // Qwen3-30B-A3B's head (H 2048, V 151,936) on 8k tokens: chunks of 2048 rows, 1.24 GB of logits each, the
        // size of the head's f32 gradient, instead of 5 GB for all rows
        assertEquals(2048, LmHeadLoss.chunkRows(8192, 2048, 151936, 0));
        assertEquals(100, LmHeadLoss.chunkRows(100, 2048, 151936, 0));
        assertEquals(3, LmHeadLoss.chunkRows(10, 64, 512, 3));
        assertEquals(10, LmHeadLoss.chunkRows(10, 64, 512, 50));
        // one chunk of 16k tokens asked for: capped so that its logits stay under 2^31 elements
        assertEquals(Integer.MAX_VALUE / 151936, LmHeadLoss.chunkRows(16384, 2048, 151936, 16384));
        Qwen3MoeModel m = new Qwen3MoeModel(LmHeadTest.config(false), new CpuBackend());
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> m.setLossChunkRows(-1));
        assertTrue(e.getMessage().contains("-1") && e.getMessage().contains("0 (automatic)"), e.getMessage());
    }

    /** The fixture's model with the loss in chunks of 3 and 5 rows: the same logits, losses and gradients. */
    @ParameterizedTest(name = "rows per chunk {0}")
    @ValueSource(ints = {3, 5})
    void smallChunksMatchTransformers(int rows) throws Exception {
        Path dir = Fixtures.tiny();
        Qwen3MoeConfig config = Qwen3MoeConfig.parse(Files.readString(dir.resolve("config.json")));
        Map<String, Tensor> io = SafeTensors.read(dir.resolve("io.safetensors")).tensors();
        Map<String, Object> reference = dev.sparkmoe.core.json.Json.parseObject(
                Files.readString(dir.resolve("reference.json")));
        Qwen3MoeModel model = new Qwen3MoeModel(config, MemoryTracker.wrap(new CpuBackend()));
        model.loadState(HfCheckpoint.loadStacked(dir, config.numExperts()));
        model.setLossChunkRows(rows);
        Fixtures.Batch batch = Fixtures.batch(io.get("input_ids"), 0);
        int b = batch.batch();
        int t = batch.seqLen();
        assertTrue(b * t > 2 * rows, "the batch must span several chunks");
        Qwen3MoeModel.Pass pass = model.forward(batch.ids(), batch.targets(), b, t, batch.predicted(),
                config.routerAuxLossCoef(), StatsReducer.LOCAL, true);
        Fixtures.assertClose("logits", io.get("logits"), pass.logits().view(b, t, config.vocabSize()), 1e-5);
        double lm = pass.lmLossSum() / batch.predicted();
        double refLm = ((Number) reference.get("lm_loss")).doubleValue();
        assertEquals(refLm, lm, 1e-5 * refLm, "lm_loss");
        model.backward(pass);
        Map<String, Tensor> grads = new LinkedHashMap<>();
        for (Parameter p : model.parameters()) {
            grads.put(p.name(), p.grad());
        }
        Map<String, Tensor> hub = HfCheckpoint.unstackExperts(grads);
        Map<String, Tensor> refGrads = SafeTensors.read(dir.resolve("grads.safetensors")).tensors();
        for (Map.Entry<String, Tensor> e : refGrads.entrySet()) {
            Fixtures.assertClose("grad " + e.getKey(), e.getValue(), hub.get(e.getKey()), 1e-5);
        }
    }

    /**
     * Tied embeddings: the LM head's weight gradient and the embedding's own meet in one tensor (the head's is added
     * first, as before). Small chunks against one chunk of all rows (the unfused computation), over two
     * micro-batches whose gradients accumulate.
     */
    @Test
    void tiedEmbeddingsAccumulateTheHeadAndEmbeddingGradients() {
        Map<String, Tensor> one = tiedGrads(1000);
        for (int rows : new int[] {1, 4, 0}) {
            Map<String, Tensor> chunked = tiedGrads(rows);
            for (String k : one.keySet()) {
                Fixtures.assertClose("rows " + rows + ": grad " + k, one.get(k), chunked.get(k), 1e-6);
            }
        }
        assertTrue(one.get("model.embed_tokens.weight").maxAbs() > 0);
    }

    private static Map<String, Tensor> tiedGrads(int rows) {
        Qwen3MoeConfig config = LmHeadTest.config(true);
        Qwen3MoeModel model = new Qwen3MoeModel(config, MemoryTracker.wrap(new CpuBackend()));
        model.initRandom(5, 0.2);
        model.setLossChunkRows(rows);
        SplittableRandom r = new SplittableRandom(3);
        for (int micro = 0; micro < 2; micro++) {
            int[] ids = new int[12];
            int[] targets = new int[12];
            for (int i = 0; i < ids.length; i++) {
                ids[i] = r.nextInt(config.vocabSize());
                targets[i] = i % 6 == 5 ? -100 : r.nextInt(config.vocabSize());
            }
            model.backward(model.forward(ids, targets, 2, 6, 20, 0.01, StatsReducer.LOCAL));
        }
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (Parameter p : model.parameters()) {
            out.put(p.name(), p.grad().copy());
        }
        return out;
    }
}

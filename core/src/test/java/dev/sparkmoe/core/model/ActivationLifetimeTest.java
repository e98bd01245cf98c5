package dev.sparkmoe.core.model;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.MemoryTracker;
import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.io.SafeTensors;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/**
 * The backward pass gives activations back as it goes: what a step holds at its peak is the forward pass's saved
 * activations plus the gradient temporaries of one layer, not of every layer; and after the backward only the
 * pass's router logits and a few small tensors remain. Measured with {@link MemoryTracker}, which also fails the
 * test if anything is used after its release.
 */
class ActivationLifetimeTest {

    @Test
    void backwardReleasesLayerByLayer() throws Exception {
        // The fixture's tiny model with six layers instead of two, so that "one layer" and "every layer" differ.
        Path dir = Fixtures.tiny();
        java.util.Map<String, Object> json = Json.parseObject(Files.readString(dir.resolve("config.json")));
        json.put("num_hidden_layers", 6L);
        Qwen3MoeConfig config = Qwen3MoeConfig.parse(Json.write(json, false));
        Backend be = MemoryTracker.wrap(new CpuBackend());
        MemoryTracker mem = MemoryTracker.of(be);
        Qwen3MoeModel model = new Qwen3MoeModel(config, be);
        model.initRandom(7, 0.02);
        for (Parameter p : model.parameters()) {
            p.grad(); // made now, so that what follows counts activations only
        }
        Fixtures.Batch batch = Fixtures.batch(SafeTensors.read(dir.resolve("io.safetensors")).tensors()
                .get("input_ids"), 0);
        int b = batch.batch();
        int t = batch.seqLen();
        int n = b * t;

        long before = mem.liveBytes();
        Qwen3MoeModel.Pass pass = model.forward(batch.ids(), batch.targets(), b, t, batch.predicted(),
                config.routerAuxLossCoef(), StatsReducer.LOCAL);
        long saved = mem.liveBytes() - before; // activations the backward pass needs
        mem.resetPeak();
        model.backward(pass);
        long backwardPeak = mem.peakBytes() - before - saved;
        long left = mem.liveBytes() - before;

        // Left: the router logits of each MoE layer (the pass's output), ids, targets and the aux gradient.
        long routerLogits = 0;
        for (Tensor r : pass.routerLogits()) {
            routerLogits += MemoryTracker.deviceBytes(r.dtype(), r.numel());
        }
        long small = 2 * MemoryTracker.deviceBytes(DType.I32, n) + MemoryTracker.deviceBytes(DType.F32,
                config.numExperts());
        assertEquals(routerLogits + small, left, "bytes left after backward");

        // The peak of the backward pass above the saved activations: the temporaries of about one layer (the fused
        // loss computed the head's gradients in the forward pass, so the head adds nothing). Before the backward
        // released as it went, it held every layer's: six times as much here.
        long perLayer = saved / config.numHiddenLayers();
        assertTrue(backwardPeak <= 2 * perLayer, () -> String.format(
                "backward peaked %d B above the saved activations (%d B in %d layers)", backwardPeak, saved,
                config.numHiddenLayers()));
    }
}

package dev.sparkmoe.parallel.plan;

import dev.sparkmoe.core.model.DecoderLayer;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.fsdp.FullyShard;
import dev.sparkmoe.parallel.fsdp.MixedPrecisionPolicy;
import dev.sparkmoe.parallel.mesh.DeviceMesh;
import dev.sparkmoe.parallel.mesh.ParallelDims;
import java.util.List;
import java.util.Map;

/**
 * The Qwen3-MoE plan, as LMMs-Engine's Qwen3-MoE strategy and torchtitan apply it: the experts are already stacked;
 * with ep > 1 the experts of every MoE layer get {@link ExpertParallel} over {@code ep}; then FSDP bottom-up: each
 * layer's experts on {@code dp_shard_mod_ep}, with Shard(0) over the local experts when there are at least as many
 * of them as ranks in that group, else Shard(1) (torchtitan's rule: Shard(0) keeps whole experts on a rank and
 * lets the collectives run on the parameters' own memory, with no copies), each decoder layer on the full
 * {@code fsdp} mesh with Shard(0), the head (final norm and LM head, {@link Qwen3MoeModel#head()}) as a unit of its
 * own on {@code fsdp}, as torchtitan's {@code fully_shard([model.norm, model.output])}, and last the root, which
 * then holds only the embedding, on {@code fsdp}.
 *
 * <p>Why the head is a unit of its own: as part of the root, its weights were gathered with the embedding at the
 * start of the step, exposed, and its gradients (the LM head's backward is the first of the backward pass) were
 * reduced only at the root's afterBackward, after the whole backward, exposed again. As a unit, the FSDP schedule
 * gathers it while the last decoder layer computes (the units prefetch the next ones in the recorded forward
 * order) and starts its reduce-scatter as soon as its own backward is done, under the last layer's
 * backward. With tied word embeddings the LM head weight is the embedding: the head unit then holds only the final
 * norm, and the tied weight is gathered and reduced with the root as before.
 *
 * <p>Neither the head nor the root reshards after forward, nor the last decoder layer (its attention and experts
 * units), as torchtitan leaves its last transformer block: the head is the last unit of the forward and the first of
 * the backward, the last layer the next, so resharding them would only gather them again at once, exposed at the
 * turn from forward to backward; keeping them costs one layer's gathered weights for the head's forward and
 * backward. The root's hooks enclose the whole backward, so a
 * resharded embedding would be gathered again, exposed, at the very start of the backward, although the backward
 * reads only its gradient (untied) or needs it right then for the LM head (tied); keeping it costs the memory of the
 * full embedding through the step, as before.
 */
public final class Qwen3MoeParallelizer implements ModelParallelizer {
    public static final String EXPERTS_PATTERN = "model.layers.*.mlp.experts";

    /**
     * Whether the last decoder layer keeps its gathered weights from forward to backward: always, as the class
     * comment says (what the memory planner assumes).
     */
    public static boolean keepsLastLayerGathered() {
        return true;
    }

    /**
     * The dim FSDP shards a layer's stacked experts on: 0 (whole experts on a rank) when the rank holds at least as
     * many experts as the group has ranks, else 1.
     */
    public static int expertShardDim(int localExperts, int groupSize) {
        return localExperts >= groupSize ? 0 : 1;
    }

    @Override
    public void parallelize(Module root, DeviceMesh mesh, ParallelDims dims, MixedPrecisionPolicy policy,
                            FullyShard fsdp) {
        if (!(root instanceof Qwen3MoeModel)) {
            throw new IllegalArgumentException("the qwen3_moe plan needs a Qwen3MoeModel, got "
                    + root.getClass().getName());
        }
        Qwen3MoeModel model = (Qwen3MoeModel) root;
        dims.validateFor(model.config().numExperts());
        boolean anyMoe = model.moeLayerCount() > 0;
        if (dims.epEnabled() && anyMoe) {
            Parallelize.parallelizeModule(model, mesh, Map.of(EXPERTS_PATTERN, new ExpertParallel()));
        }
        Communicator expertGroup = mesh.get(DeviceMesh.DP_SHARD_MOD_EP).communicator();
        Communicator fsdpGroup = mesh.get(DeviceMesh.FSDP).communicator();
        List<DecoderLayer> layers = model.layers();
        for (int i = 0; i < layers.size(); i++) {
            DecoderLayer layer = layers.get(i);
            // the last layer keeps its weights from forward to backward
            boolean reshard = i < layers.size() - 1;
            if (layer.isMoe()) {
                int expertDim = expertShardDim(layer.moe().experts().localExperts(), expertGroup.size());
                fsdp.fullyShard(layer.moe().experts(), expertGroup, p -> expertDim, policy, reshard);
            }
            fsdp.fullyShard(layer, fsdpGroup, FullyShard.SHARD_DIM_0, policy, reshard);
        }
        fsdp.fullyShard(model.head(), fsdpGroup, FullyShard.SHARD_DIM_0, policy, false);
        fsdp.fullyShard(model, fsdpGroup, FullyShard.SHARD_DIM_0, policy, false);
    }
}

package dev.sparkmoe.parallel.plan;

import dev.sparkmoe.core.model.DecoderLayer;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.parallel.loss.VocabParallelCrossEntropy;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.fsdp.FullyShard;
import dev.sparkmoe.parallel.fsdp.MixedPrecisionPolicy;
import dev.sparkmoe.parallel.mesh.DeviceMesh;
import dev.sparkmoe.parallel.mesh.ParallelDims;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The Qwen3-MoE plan, as LMMs-Engine's Qwen3-MoE strategy and torchtitan apply it: the experts are already stacked;
 * with ep > 1 the experts of every MoE layer get {@link ExpertParallel} over {@code ep}; then FSDP bottom-up: each
 * layer's experts on {@code dp_shard_mod_ep}, with Shard(0) over the local experts when there are at least as many
 * of them as ranks in that group, else Shard(1) (torchtitan's rule: Shard(0) keeps whole experts on a rank and
 * lets the collectives run on the parameters' own memory, with no copies), each decoder layer on the full
 * {@code fsdp} mesh with Shard(0), the head (final norm and LM head, {@link Qwen3MoeModel#head()}) as a unit of its
 * own on {@code fsdp}, as torchtitan's {@code fully_shard([model.norm, model.output])}, the token embedding as a unit
 * of its own (untied), as torchtitan's {@code fully_shard(model.tok_embeddings)}, and last the root.
 *
 * <p>Why the head is a unit of its own: as part of the root, its weights were gathered with the embedding at the
 * start of the step, exposed, and its gradients were reduced only at the root's afterBackward, after the whole
 * backward, exposed again. As a unit, the FSDP schedule gathers it while the last decoder layer computes (the units
 * prefetch the next ones in the recorded forward order) and starts its reduce-scatter as soon as its own backward is
 * done, under the last layer's backward.
 *
 * <p>Which units stay gathered from forward to backward. torchtitan does not reshard the last transformer block after
 * forward, nor {@code [norm, output]}: they are the first units of the backward, so resharding them would only gather
 * them again at once, exposed at the turn from forward to backward. The last decoder layer (its attention and experts
 * units) is kept for that reason. The head is not: with the loss fused into it, its forward computes all its
 * gradients (the LM head's weight and input gradients chunk by chunk, then the final norm's backward), so its
 * backward only hands them over and reads no weight; it reshards after forward and is not gathered for backward
 * ({@link FsdpUnit#setUnshardInBackward}, FSDP2's {@code set_unshard_in_backward(False)}). The embedding's backward is a
 * scatter-add into its gradient, which reads no weight either (as torchtitan and OLMo-core mark their embedding
 * units): untied, its unit reshards right after the lookup and is not gathered for backward; tied, the table is also
 * the LM head weight, so the root holds it, gathered from the start of the forward to the head's loss at its end, and
 * does not gather it for backward. Every one of these units is gathered once per forward pass, and its gradients
 * are reduce-scattered after its backward as before. Keeping the head and the embedding gathered, as before, cost
 * their full weights through the whole backward on every rank.
 *
 * <p>The LM head, untied and over an FSDP group of several ranks, is never gathered: each rank keeps its rows of it
 * (Shard(0), torch.chunk's split of the vocabulary) and the loss is computed vocabulary-parallel over the group
 * ({@link VocabParallelCrossEntropy}, as tensor parallelism's loss parallel): the ranks exchange their final hidden
 * states (N x H each) instead of the head (V x H) and its full gradient, and each rank's LM head gradient is only ever
 * its rows. A tied head is the embedding's table, which the embedding's lookup needs whole: it keeps the gathered
 * path.
 */
public final class Qwen3MoeParallelizer implements ModelParallelizer {
    public static final String EXPERTS_PATTERN = "model.layers.*.mlp.experts";

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
        // an untied LM head over a group of several ranks: each rank keeps its rows and the loss is vocabulary-parallel
        boolean vocabParallel = !model.head().tied() && fsdpGroup.size() > 1;
        Parameter lmHead = model.head().weight();
        fsdp.fullyShard(model.head(), fsdpGroup, FullyShard.SHARD_DIM_0, policy, true,
                vocabParallel ? Set.of(lmHead) : Set.of()).setUnshardInBackward(false);
        if (vocabParallel) {
            model.setLmHeadLoss(new VocabParallelCrossEntropy(fsdpGroup, fsdp.get(lmHead).layout()));
        }
        if (!model.head().tied()) {
            fsdp.fullyShard(model.embedding(), fsdpGroup, FullyShard.SHARD_DIM_0, policy, true)
                    .setUnshardInBackward(false);
        }
        fsdp.fullyShard(model, fsdpGroup, FullyShard.SHARD_DIM_0, policy, true).setUnshardInBackward(false);
    }
}

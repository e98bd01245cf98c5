package dev.sparkmoe.parallel.plan;

import dev.sparkmoe.core.model.DecoderLayer;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.fsdp.FullyShard;
import dev.sparkmoe.parallel.fsdp.MixedPrecisionPolicy;
import dev.sparkmoe.parallel.mesh.DeviceMesh;
import dev.sparkmoe.parallel.mesh.ParallelDims;
import java.util.Map;

/**
 * The Qwen3-MoE plan, as LMMs-Engine's Qwen3-MoE strategy and torchtitan apply it: the experts are already stacked;
 * with ep > 1 the experts of every MoE layer get {@link ExpertParallel} over {@code ep}; then FSDP bottom-up: each
 * layer's experts on {@code dp_shard_mod_ep}, with Shard(0) over the local experts when there are at least as many
 * of them as ranks in that group, else Shard(1) (torchtitan's rule: Shard(0) keeps whole experts on a rank and
 * lets the collectives run on the parameters' own memory, with no copies), each decoder layer on the full
 * {@code fsdp} mesh with Shard(0), and the root (embedding, final norm, LM head) on {@code fsdp}, kept gathered
 * between forward and backward.
 */
public final class Qwen3MoeParallelizer implements ModelParallelizer {
    public static final String EXPERTS_PATTERN = "model.layers.*.mlp.experts";

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
        for (DecoderLayer layer : model.layers()) {
            if (layer.isMoe()) {
                int expertDim = layer.moe().experts().localExperts() >= expertGroup.size() ? 0 : 1;
                fsdp.fullyShard(layer.moe().experts(), expertGroup, p -> expertDim, policy, true);
            }
            fsdp.fullyShard(layer, fsdpGroup, FullyShard.SHARD_DIM_0, policy, true);
        }
        fsdp.fullyShard(model, fsdpGroup, FullyShard.SHARD_DIM_0, policy, false);
    }
}

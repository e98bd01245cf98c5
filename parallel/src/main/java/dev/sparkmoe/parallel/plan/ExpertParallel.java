package dev.sparkmoe.parallel.plan;

import dev.sparkmoe.core.model.Experts;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.expert.AllToAllTokenDispatcher;
import dev.sparkmoe.parallel.fsdp.ShardLayout;
import dev.sparkmoe.parallel.mesh.DeviceMesh;
import java.util.ArrayList;
import java.util.List;

/**
 * Expert parallelism for stacked experts: the partition function shards each stacked weight Shard(0) over the
 * mesh's {@code ep} dimension (rank i keeps experts [i * E/ep, (i+1) * E/ep)); the input and output transforms are
 * the all-to-all dispatch and combine of {@link AllToAllTokenDispatcher}.
 */
public final class ExpertParallel implements ParallelStyle {

    @Override
    public void apply(Module module, DeviceMesh mesh) {
        if (!(module instanceof Experts)) {
            throw new IllegalArgumentException("ExpertParallel applies to stacked experts modules, not to "
                    + module.getClass().getSimpleName() + " at " + module.path());
        }
        Experts experts = (Experts) module;
        Communicator ep = mesh.get(DeviceMesh.EP).communicator();
        AllToAllTokenDispatcher dispatcher = new AllToAllTokenDispatcher(ep, experts.numExperts());
        List<Tensor> local = new ArrayList<>();
        for (Parameter p : experts.ownParameters()) {
            local.add(new ShardLayout(p.shape(), 0, ep.size()).slice(p.backend(), p.value(), ep.rank()));
        }
        for (Parameter p : experts.ownParameters()) {
            p.backend().release(p.value());
        }
        experts.partition(dispatcher.firstLocalExpert(), dispatcher.localExperts(), dispatcher);
        List<Parameter> params = experts.ownParameters();
        for (int i = 0; i < params.size(); i++) {
            params.get(i).setValue(local.get(i));
        }
    }
}

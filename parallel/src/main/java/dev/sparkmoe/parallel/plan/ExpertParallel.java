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
 * Expert parallelism for stacked experts. Partition: each stacked weight Shard(0) over the mesh's {@code ep}
 * dimension (ep rank i keeps experts [i * E/ep, (i+1) * E/ep)): a full weight is sliced, an unmaterialised one only
 * takes the local shape. Transforms: the input transform is the all-to-all
 * dispatch of {@link AllToAllTokenDispatcher} (token rows to the ranks of their experts, permuted into
 * local-expert-major order) and the output transform its combine (back home, into slot order).
 */
public final class ExpertParallel implements ParallelStyle {

    private static Experts experts(Module module) {
        if (!(module instanceof Experts)) {
            throw new IllegalArgumentException("ExpertParallel applies to stacked experts modules, not to "
                    + module.getClass().getSimpleName() + " at " + module.path());
        }
        return (Experts) module;
    }

    @Override
    public void partition(Module module, DeviceMesh mesh) {
        Experts experts = experts(module);
        Communicator ep = mesh.get(DeviceMesh.EP).communicator();
        if (experts.numExperts() % ep.size() != 0) {
            throw new IllegalArgumentException("ep (" + ep.size() + ") must divide num_experts ("
                    + experts.numExperts() + ") of " + module.path());
        }
        int local = experts.numExperts() / ep.size();
        List<Parameter> params = experts.ownParameters();
        boolean materialised = params.get(0).isMaterialised();
        for (Parameter p : params) {
            if (p.isMaterialised() != materialised) {
                throw new IllegalStateException("the experts of " + module.path() + " are partly materialised ("
                        + p.name() + " is" + (p.isMaterialised() ? "" : " not") + "); a plan places either full "
                        + "weights or unmaterialised ones");
            }
        }
        if (!materialised) { // shapes only: the local experts are allocated later, by their owner
            experts.partition(ep.rank() * local, local);
            return;
        }
        List<Tensor> slices = new ArrayList<>();
        for (Parameter p : params) {
            slices.add(new ShardLayout(p.shape(), 0, ep.size()).slice(p.backend(), p.value(), ep.rank()));
            p.backend().release(p.value());
        }
        experts.partition(ep.rank() * local, local);
        for (int i = 0; i < params.size(); i++) {
            params.get(i).setValue(slices.get(i));
        }
    }

    @Override
    public void installTransforms(Module module, DeviceMesh mesh) {
        Experts experts = experts(module);
        experts.setDispatcher(new AllToAllTokenDispatcher(mesh.get(DeviceMesh.EP).communicator(),
                experts.numExperts()));
    }
}

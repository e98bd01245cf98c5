package dev.sparkmoe.parallel.fsdp;

import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.ModuleHook;
import java.util.List;

/**
 * The FSDP hooks of one module (a "unit", as fully_shard makes one): all-gather its parameters before forward and
 * before backward, free them after forward (unless {@code reshardAfterForward} is off, as for the root), and after
 * backward reduce-scatter the gradients into the shards and free the gathered weights.
 */
public final class FsdpUnit implements ModuleHook {
    private final String path;
    private final List<FsdpParam> params;
    private final boolean reshardAfterForward;

    FsdpUnit(String path, List<FsdpParam> params, boolean reshardAfterForward) {
        this.path = path;
        this.params = List.copyOf(params);
        this.reshardAfterForward = reshardAfterForward;
    }

    public String path() {
        return path;
    }

    public List<FsdpParam> params() {
        return params;
    }

    public void unshard() {
        for (FsdpParam p : params) {
            p.unshard();
        }
    }

    public void reshard() {
        for (FsdpParam p : params) {
            p.reshard();
        }
    }

    @Override
    public void beforeForward(Module m) {
        unshard();
    }

    @Override
    public void afterForward(Module m) {
        if (reshardAfterForward) {
            reshard();
        }
    }

    @Override
    public void beforeBackward(Module m) {
        unshard();
    }

    @Override
    public void afterBackward(Module m) {
        for (FsdpParam p : params) {
            p.reduceGrad();
        }
        reshard();
    }
}

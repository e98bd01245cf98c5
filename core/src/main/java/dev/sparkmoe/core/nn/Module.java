package dev.sparkmoe.core.nn;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * A node of the model tree: a dotted path ("model.layers.3.mlp.experts"), its own parameters, its children, and
 * hooks that parallel wrappers (FSDP, expert parallelism) attach without the model knowing about meshes or ranks.
 * The model calls {@link #beforeForward()} / {@link #afterForward()} around a module's forward and
 * {@link #beforeBackward()} / {@link #afterBackward()} around its backward.
 */
public abstract class Module {
    private final String path;
    private final List<ModuleHook> hooks = new ArrayList<>();

    protected Module(String path) {
        this.path = path;
    }

    public String path() {
        return path;
    }

    /** Parameters owned directly by this module (not its children). */
    public abstract List<Parameter> ownParameters();

    public List<Module> children() {
        return Collections.emptyList();
    }

    /** This module and all descendants, depth first, in declaration order. */
    public List<Module> modules() {
        List<Module> out = new ArrayList<>();
        out.add(this);
        for (Module c : children()) {
            out.addAll(c.modules());
        }
        return out;
    }

    /** All parameters of this module and its descendants, in declaration order. */
    public List<Parameter> parameters() {
        List<Parameter> out = new ArrayList<>();
        for (Module m : modules()) {
            out.addAll(m.ownParameters());
        }
        return out;
    }

    public void addHook(ModuleHook hook) {
        hooks.add(hook);
    }

    public List<ModuleHook> hooks() {
        return Collections.unmodifiableList(hooks);
    }

    public void beforeForward() {
        for (ModuleHook h : hooks) {
            h.beforeForward(this);
        }
    }

    public void afterForward() {
        for (int i = hooks.size() - 1; i >= 0; i--) {
            hooks.get(i).afterForward(this);
        }
    }

    public void beforeBackward() {
        for (ModuleHook h : hooks) {
            h.beforeBackward(this);
        }
    }

    public void afterBackward() {
        for (int i = hooks.size() - 1; i >= 0; i--) {
            hooks.get(i).afterBackward(this);
        }
    }
}

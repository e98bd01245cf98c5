package dev.sparkmoe.parallel.plan;

import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.parallel.mesh.DeviceMesh;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/** {@code parallelize_module}: applies a plan (module path pattern to style) to a model. */
public final class Parallelize {
    private Parallelize() {
    }

    /**
     * For each plan entry, applies the style to every module whose path matches the pattern; '*' matches exactly
     * one path segment ("model.layers.*.mlp.experts"). A pattern that matches nothing is an error: a plan that
     * silently does nothing is a bug.
     */
    public static void parallelizeModule(Module root, DeviceMesh mesh, Map<String, ParallelStyle> plan) {
        for (Map.Entry<String, ParallelStyle> e : plan.entrySet()) {
            List<Module> hits = new ArrayList<>();
            for (Module m : root.modules()) {
                if (matches(e.getKey(), m.path())) {
                    hits.add(m);
                }
            }
            if (hits.isEmpty()) {
                throw new IllegalArgumentException("parallel plan entry '" + e.getKey()
                        + "' matches no module of the model; module paths look like 'model.layers.0.mlp.experts'");
            }
            for (Module m : hits) {
                e.getValue().apply(m, mesh);
            }
        }
    }

    /** Glob match of dotted paths, '*' standing for one segment. */
    public static boolean matches(String pattern, String path) {
        String[] p = pattern.split("\\.", -1);
        String[] s = path.split("\\.", -1);
        if (p.length != s.length) {
            return false;
        }
        for (int i = 0; i < p.length; i++) {
            if (!p[i].equals("*") && !p[i].equals(s[i])) {
                return false;
            }
        }
        return true;
    }
}

package dev.sparkmoe.core.io;

import dev.sparkmoe.core.tensor.TensorSpec;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * How the Hub's expert tensors make up the stacked ones our model keeps (see {@link HfCheckpoint} for the three
 * forms), decided from names, dtypes and shapes alone: the in-memory conversion ({@link HfCheckpoint#stackExperts})
 * and the sliced reader ({@link HfCheckpointReader}) share these checks and their messages, and the reader then
 * reads each stacked region straight from the tensors named here, without making the stacked tensor.
 */
final class ExpertStacking {
    static final Pattern PER_EXPERT =
            Pattern.compile("(.+\\.mlp\\.experts)\\.(\\d+)\\.(gate_proj|up_proj|down_proj)\\.weight");
    static final Pattern FUSED = Pattern.compile("(.+\\.mlp\\.experts)\\.gate_up_proj");
    static final Pattern STACKED = Pattern.compile("(.+\\.mlp\\.experts)\\.(gate_proj|up_proj|down_proj)");
    static final List<String> PROJS = List.of("gate_proj", "up_proj", "down_proj");

    private ExpertStacking() {
    }

    /** Where the values of one tensor of the stacked naming come from. */
    sealed interface Source permits Whole, PerExpert, FusedHalf {
    }

    /** A stored tensor as it is: any non-expert tensor, or an expert weight stored stacked already. */
    record Whole(String hubName) implements Source {
    }

    /** Expert e is the stored 2-D tensor {@code hubNames.get(e)}. */
    record PerExpert(List<String> hubNames) implements Source {
    }

    /** The gate ({@code half} 0) or up (1) rows of each expert of a fused {@code gate_up_proj} [E, 2I, H]. */
    record FusedHalf(String hubName, int half) implements Source {
    }

    /** One tensor of the stacked naming: its name, dtype and shape, and its source. */
    record Stacked(TensorSpec spec, Source source) {
    }

    /**
     * The stacked tensors that {@code hub} (stored names, dtypes, shapes) makes, by name. Errors name the tensor: an
     * expert index &gt;= numExperts, a missing expert, shapes or dtypes that disagree, or two forms mixed in one
     * layer.
     */
    static Map<String, Stacked> plan(Map<String, TensorSpec> hub, int numExperts) {
        if (numExperts <= 0) {
            throw new IllegalArgumentException("numExperts must be positive, got " + numExperts);
        }
        // prefix -> proj -> expert -> stored tensor
        Map<String, Map<String, TreeMap<Integer, TensorSpec>>> perExpert = new TreeMap<>();
        Map<String, TensorSpec> fused = new TreeMap<>();
        Map<String, TensorSpec> stacked = new TreeMap<>();
        Map<String, Stacked> out = new TreeMap<>();
        for (Map.Entry<String, TensorSpec> e : hub.entrySet()) {
            String name = e.getKey();
            Matcher m = PER_EXPERT.matcher(name);
            if (m.matches()) {
                String idx = m.group(2);
                if ((idx.length() > 1 && idx.charAt(0) == '0') || idx.length() > 9
                        || Integer.parseInt(idx) >= numExperts) {
                    throw new IllegalArgumentException("tensor '" + name + "' has expert index " + idx
                            + " but num_experts is " + numExperts + " (valid indices 0.." + (numExperts - 1) + ")"
                            + "; check num_experts in the config against the checkpoint");
                }
                perExpert.computeIfAbsent(m.group(1), k -> new TreeMap<>())
                        .computeIfAbsent(m.group(3), k -> new TreeMap<>())
                        .put(Integer.parseInt(idx), e.getValue().withName(name));
                continue;
            }
            if (FUSED.matcher(name).matches()) {
                fused.put(name, e.getValue().withName(name));
                continue;
            }
            if (STACKED.matcher(name).matches()) {
                stacked.put(name, e.getValue().withName(name));
                continue;
            }
            out.put(name, new Stacked(e.getValue().withName(name), new Whole(name)));
        }
        for (Map.Entry<String, Map<String, TreeMap<Integer, TensorSpec>>> g : perExpert.entrySet()) {
            String prefix = g.getKey();
            for (String form : List.of(prefix + ".gate_up_proj", prefix + ".gate_proj", prefix + ".up_proj",
                    prefix + ".down_proj")) {
                if (fused.containsKey(form) || stacked.containsKey(form)) {
                    throw new IllegalArgumentException("tensor '" + form + "' (stacked or fused) and per-expert tensors"
                            + " such as '" + g.getValue().values().iterator().next().firstEntry().getValue().name()
                            + "' both describe the experts of " + prefix + "; a checkpoint must use one form");
                }
            }
            TensorSpec[] byProj = new TensorSpec[3];
            List<List<String>> names = new ArrayList<>();
            for (int p = 0; p < 3; p++) {
                String proj = PROJS.get(p);
                TreeMap<Integer, TensorSpec> experts = g.getValue().getOrDefault(proj, new TreeMap<>());
                if (experts.size() != numExperts) {
                    List<Integer> absent = new ArrayList<>();
                    for (int k = 0; k < numExperts && absent.size() < 10; k++) {
                        if (!experts.containsKey(k)) {
                            absent.add(k);
                        }
                    }
                    throw new IllegalArgumentException("experts of " + prefix + " are incomplete: "
                            + (numExperts - experts.size()) + " of " + numExperts + " " + proj
                            + " tensors are missing, e.g. '" + prefix + "." + absent.get(0) + "." + proj
                            + ".weight' (missing indices " + absent + (absent.size() == 10 ? " ..." : "") + ")");
                }
                TensorSpec first = experts.firstEntry().getValue();
                List<String> parts = new ArrayList<>();
                for (TensorSpec t : experts.values()) {
                    if (t.rank() != 2 || !Arrays.equals(t.shape(), first.shape()) || t.dtype() != first.dtype()) {
                        throw new IllegalArgumentException("tensor '" + t.name() + "' is " + t.dtype() + " "
                                + Arrays.toString(t.shape()) + " but '" + first.name() + "' is "
                                + first.dtype() + " " + Arrays.toString(first.shape())
                                + "; all experts of a projection must share a 2-D shape and a dtype");
                    }
                    parts.add(t.name());
                }
                int[] inner = first.shape();
                byProj[p] = new TensorSpec(prefix + "." + proj, first.dtype(), new int[] {numExperts, inner[0],
                    inner[1]});
                names.add(parts);
            }
            checkTriple(prefix, byProj[0], byProj[1], byProj[2], numExperts);
            for (int p = 0; p < 3; p++) {
                out.put(byProj[p].name(), new Stacked(byProj[p], new PerExpert(List.copyOf(names.get(p)))));
            }
        }
        for (Map.Entry<String, TensorSpec> f : fused.entrySet()) {
            String prefix = f.getKey().substring(0, f.getKey().length() - ".gate_up_proj".length());
            TensorSpec gu = f.getValue();
            TensorSpec down = stacked.remove(prefix + ".down_proj");
            if (stacked.containsKey(prefix + ".gate_proj") || stacked.containsKey(prefix + ".up_proj")) {
                throw new IllegalArgumentException("tensor '" + f.getKey() + "' (fused) and '" + prefix
                        + ".gate_proj'/'up_proj' (stacked) both describe the experts of " + prefix
                        + "; a checkpoint must use one form");
            }
            if (down == null) {
                throw new IllegalArgumentException("tensor '" + f.getKey() + "' has no matching '" + prefix
                        + ".down_proj' [E, H, I]");
            }
            if (gu.rank() != 3 || gu.dim(0) != numExperts || gu.dim(1) % 2 != 0) {
                throw new IllegalArgumentException("tensor '" + f.getKey() + "' has shape "
                        + Arrays.toString(gu.shape()) + "; expected [num_experts=" + numExperts
                        + ", 2 * moe_intermediate_size, hidden_size]");
            }
            int[] half = {gu.dim(0), gu.dim(1) / 2, gu.dim(2)};
            TensorSpec gate = new TensorSpec(prefix + ".gate_proj", gu.dtype(), half);
            TensorSpec up = new TensorSpec(prefix + ".up_proj", gu.dtype(), half);
            checkTriple(prefix, gate, up, down, numExperts);
            out.put(gate.name(), new Stacked(gate, new FusedHalf(f.getKey(), 0)));
            out.put(up.name(), new Stacked(up, new FusedHalf(f.getKey(), 1)));
            out.put(down.name(), new Stacked(down, new Whole(down.name())));
        }
        for (Map.Entry<String, TensorSpec> s : stacked.entrySet()) {
            TensorSpec t = s.getValue();
            if (t.rank() != 3 || t.dim(0) != numExperts) {
                throw new IllegalArgumentException("tensor '" + s.getKey() + "' has shape " + Arrays.toString(t.shape())
                        + "; a stacked expert weight must be [num_experts=" + numExperts + ", ., .]");
            }
            out.put(s.getKey(), new Stacked(t, new Whole(s.getKey())));
        }
        return Collections.unmodifiableMap(new LinkedHashMap<>(out));
    }

    private static void checkTriple(String prefix, TensorSpec gate, TensorSpec up, TensorSpec down, int numExperts) {
        int[] g = gate.shape();
        int[] d = down.shape();
        boolean ok = g.length == 3 && d.length == 3 && Arrays.equals(g, up.shape()) && g[0] == numExperts
                && d[0] == numExperts && d[1] == g[2] && d[2] == g[1] && gate.dtype() == up.dtype()
                && gate.dtype() == down.dtype();
        if (!ok) {
            throw new IllegalArgumentException("experts of " + prefix + " disagree: gate_proj " + gate.dtype() + " "
                    + Arrays.toString(g) + ", up_proj " + up.dtype() + " " + Arrays.toString(up.shape())
                    + ", down_proj " + down.dtype() + " " + Arrays.toString(d) + "; expected gate/up [E=" + numExperts
                    + ", I, H] and down [E, H, I] of one dtype");
        }
    }

    /** The Hub name of expert {@code e} of a stacked expert weight ({@code ...experts.gate_proj}), or null. */
    static String perExpertName(String stackedName, int e) {
        Matcher s = STACKED.matcher(stackedName);
        return s.matches() ? s.group(1) + "." + e + "." + s.group(2) + ".weight" : null;
    }
}

package dev.sparkmoe.parallel.mesh;

import dev.sparkmoe.parallel.comm.Communicator;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * An n-dimensional grid of global ranks with named dimensions, as PyTorch's {@code DeviceMesh}. Ranks are laid out
 * row-major: the last dimension varies fastest, so {@code rank = sum_i coord[i] * stride[i]}.
 *
 * <p>Besides its dimensions a mesh has named <em>views</em>: flattened sets of dimensions (torchtitan's
 * {@code _flatten}) and aliases. A view's group is the set of ranks that share this rank's coordinates on every other
 * dimension, ordered row-major over the view's dimensions; this rank's local rank is its index there.
 *
 * <p>The training mesh ({@link #forTraining}) has dimensions {@code dp_shard_mod_ep} (size dpShard/ep) and
 * {@code dp_shard_in_ep} (size ep), so {@code rank = i_mod_ep * ep + i_in_ep}: each expert-parallel group is ep
 * consecutive ranks, as in torchtitan. Views: {@code ep} = dp_shard_in_ep, {@code fsdp} = {@code dp_shard} = both
 * dimensions (the whole world).
 *
 * <p>Communicators: {@link #create} splits the world once per distinct group eagerly, in a fixed order (dimensions in
 * mesh order, then views in declaration order), because split is collective: every rank must construct the same
 * mesh at the same point. The mesh owns these communicators and closes them in {@link #close()}; it does not close
 * the world.
 */
public final class DeviceMesh implements AutoCloseable {

    public static final String DP_SHARD_MOD_EP = "dp_shard_mod_ep";
    public static final String DP_SHARD_IN_EP = "dp_shard_in_ep";
    public static final String EP = "ep";
    public static final String FSDP = "fsdp";
    public static final String DP_SHARD = "dp_shard";

    /** One named view of the mesh as seen from this rank. */
    public static final class Group {
        private final String name;
        private final List<String> dims;
        private final List<Integer> ranks;
        private final int localRank;
        private Communicator comm;

        private Group(String name, List<String> dims, List<Integer> ranks, int localRank) {
            this.name = name;
            this.dims = dims;
            this.ranks = ranks;
            this.localRank = localRank;
        }

        public String name() {
            return name;
        }

        /** The mesh dimensions this view spans, in mesh order. */
        public List<String> dims() {
            return dims;
        }

        public int size() {
            return ranks.size();
        }

        /** This rank's index in {@link #ranks()} (its coordinate along the view). */
        public int localRank() {
            return localRank;
        }

        /** Global ranks of this rank's group, in local-rank order. */
        public List<Integer> ranks() {
            return ranks;
        }

        /** The group's communicator (rank == {@link #localRank()}); absent for a layout-only mesh. */
        public Communicator communicator() {
            if (comm == null) {
                throw new IllegalStateException("mesh view '" + name + "' has no communicator: the mesh was built"
                        + " with DeviceMesh.layout (no world); use DeviceMesh.create");
            }
            return comm;
        }

        @Override
        public String toString() {
            return "Group(" + name + " " + dims + ", local rank " + localRank + " of " + ranks + ")";
        }
    }

    private final int[] shape;
    private final String[] dimNames;
    private final int globalRank;
    private final int[] coord;
    private final Map<String, Group> views = new LinkedHashMap<>();
    private final List<Communicator> owned = new ArrayList<>();

    private DeviceMesh(Communicator world, int globalRank, int[] shape, String[] dimNames,
                       Map<String, List<String>> flattened) {
        if (shape.length == 0 || shape.length != dimNames.length) {
            throw new IllegalArgumentException("mesh shape " + Arrays.toString(shape) + " and dimension names "
                    + Arrays.toString(dimNames) + " must be non-empty and of equal length");
        }
        long total = 1;
        for (int i = 0; i < shape.length; i++) {
            if (shape[i] < 1) {
                throw new IllegalArgumentException("mesh dimension '" + dimNames[i] + "' has size " + shape[i]
                        + "; sizes must be >= 1 (shape " + Arrays.toString(shape) + ")");
            }
            total *= shape[i];
        }
        if (world != null && world.size() != total) {
            throw new IllegalArgumentException("mesh shape " + Arrays.toString(shape) + " " + Arrays.toString(dimNames)
                    + " holds " + total + " ranks but the world has " + world.size());
        }
        if (globalRank < 0 || globalRank >= total) {
            throw new IllegalArgumentException("rank " + globalRank + " is outside mesh " + Arrays.toString(shape)
                    + " of " + total + " ranks");
        }
        this.shape = shape.clone();
        this.dimNames = dimNames.clone();
        this.globalRank = globalRank;
        this.coord = coordinateOf(globalRank);

        Map<String, List<String>> all = new LinkedHashMap<>();
        for (String d : dimNames) {
            put(all, d, List.of(d));
        }
        for (Map.Entry<String, List<String>> e : flattened.entrySet()) {
            put(all, e.getKey(), e.getValue());
        }
        // A communicator shared by several views is named after the first flattened view or alias among them
        // ("ep" rather than "dp_shard_in_ep"), which is the name users know from errors and logs.
        Map<List<String>, String> commName = new HashMap<>();
        for (Map.Entry<String, List<String>> e : all.entrySet()) {
            boolean isDim = Arrays.asList(dimNames).contains(e.getKey());
            String prev = commName.get(e.getValue());
            if (prev == null || (Arrays.asList(dimNames).contains(prev) && !isDim)) {
                commName.put(e.getValue(), e.getKey());
            }
        }
        Map<List<Integer>, Communicator> byDims = new HashMap<>();
        for (Map.Entry<String, List<String>> e : all.entrySet()) {
            String name = e.getKey();
            int[] dimIdx = dimIndices(name, e.getValue());
            Group g = group(name, dimIdx);
            if (world != null) {
                List<Integer> keyDims = new ArrayList<>();
                for (int d : dimIdx) {
                    keyDims.add(d);
                }
                Communicator c = byDims.get(keyDims);
                if (c == null) {
                    c = world.split(colorOf(dimIdx), g.localRank, commName.get(e.getValue()));
                    byDims.put(keyDims, c);
                    owned.add(c);
                }
                g.comm = c;
            }
            views.put(name, g);
        }
    }

    private static void put(Map<String, List<String>> all, String name, List<String> dims) {
        if (all.put(name, List.copyOf(dims)) != null) {
            throw new IllegalArgumentException("mesh view name '" + name + "' is used twice");
        }
    }

    /** A mesh with communicators: splits {@code world} once per distinct view (collective over the world). */
    public static DeviceMesh create(Communicator world, int[] shape, String[] dimNames,
                                    Map<String, List<String>> flattened) {
        return new DeviceMesh(world, world.rank(), shape, dimNames, flattened);
    }

    /** The layout alone, as seen by {@code globalRank}: groups and coordinates, no communicators, no collectives. */
    public static DeviceMesh layout(int globalRank, int[] shape, String[] dimNames,
                                    Map<String, List<String>> flattened) {
        return new DeviceMesh(null, globalRank, shape, dimNames, flattened);
    }

    /** The training mesh (dp_shard_mod_ep, dp_shard_in_ep) with views ep, fsdp, dp_shard. Collective. */
    public static DeviceMesh forTraining(Communicator world, ParallelDims dims) {
        if (world.size() != dims.worldSize()) {
            throw new IllegalArgumentException("the world communicator has " + world.size() + " ranks but "
                    + dims + " expects world size " + dims.worldSize());
        }
        return new DeviceMesh(world, world.rank(), trainingShape(dims), trainingDimNames(), trainingViews());
    }

    /** The layout of the training mesh as seen by {@code globalRank}, without communicators. */
    public static DeviceMesh trainingLayout(ParallelDims dims, int globalRank) {
        return new DeviceMesh(null, globalRank, trainingShape(dims), trainingDimNames(), trainingViews());
    }

    private static int[] trainingShape(ParallelDims dims) {
        return new int[] {dims.dpShardModEp(), dims.dpShardInEp()};
    }

    private static String[] trainingDimNames() {
        return new String[] {DP_SHARD_MOD_EP, DP_SHARD_IN_EP};
    }

    private static Map<String, List<String>> trainingViews() {
        Map<String, List<String>> v = new LinkedHashMap<>();
        v.put(EP, List.of(DP_SHARD_IN_EP));
        v.put(FSDP, List.of(DP_SHARD_MOD_EP, DP_SHARD_IN_EP));
        v.put(DP_SHARD, List.of(DP_SHARD_MOD_EP, DP_SHARD_IN_EP));
        return v;
    }

    private int[] dimIndices(String view, List<String> dims) {
        if (dims.isEmpty()) {
            throw new IllegalArgumentException("mesh view '" + view + "' spans no dimension");
        }
        int[] idx = new int[dims.size()];
        for (int i = 0; i < idx.length; i++) {
            idx[i] = Arrays.asList(dimNames).indexOf(dims.get(i));
            if (idx[i] < 0) {
                throw new IllegalArgumentException("mesh view '" + view + "' names dimension '" + dims.get(i)
                        + "', which the mesh does not have; dimensions: " + Arrays.toString(dimNames));
            }
            if (i > 0 && idx[i] <= idx[i - 1]) {
                throw new IllegalArgumentException("mesh view '" + view + "' must list distinct dimensions in mesh"
                        + " order " + Arrays.toString(dimNames) + ", got " + dims);
            }
        }
        return idx;
    }

    private Group group(String name, int[] dimIdx) {
        boolean[] in = new boolean[shape.length];
        int groupSize = 1;
        for (int d : dimIdx) {
            in[d] = true;
            groupSize *= shape[d];
        }
        List<Integer> ranks = new ArrayList<>();
        int local = -1;
        int[] c = coord.clone();
        for (int i = 0; i < groupSize; i++) {
            // Row-major over the view's dimensions: the last varies fastest.
            int rest = i;
            for (int k = dimIdx.length - 1; k >= 0; k--) {
                c[dimIdx[k]] = rest % shape[dimIdx[k]];
                rest /= shape[dimIdx[k]];
            }
            int r = rankAt(c);
            if (r == globalRank) {
                local = i;
            }
            ranks.add(r);
        }
        return new Group(name, Arrays.stream(dimIdx).mapToObj(d -> dimNames[d]).toList(),
                Collections.unmodifiableList(ranks), local);
    }

    /** Row-major index of this rank's coordinates on the dimensions outside the view: one color per group. */
    private int colorOf(int[] dimIdx) {
        int color = 0;
        for (int d = 0; d < shape.length; d++) {
            final int dd = d;
            if (Arrays.stream(dimIdx).noneMatch(x -> x == dd)) {
                color = color * shape[d] + coord[d];
            }
        }
        return color;
    }

    /** The view named {@code name} (a dimension, a flattened view or an alias). */
    public Group get(String name) {
        Group g = views.get(name);
        if (g == null) {
            throw new IllegalArgumentException("no mesh dimension or view named '" + name + "'; known: "
                    + views.keySet());
        }
        return g;
    }

    /** Names of all dimensions and views, dimensions first. */
    public List<String> names() {
        return List.copyOf(views.keySet());
    }

    public int[] shape() {
        return shape.clone();
    }

    public List<String> dimNames() {
        return List.of(dimNames);
    }

    /** Number of ranks in the mesh. */
    public int size() {
        int n = 1;
        for (int s : shape) {
            n *= s;
        }
        return n;
    }

    public int globalRank() {
        return globalRank;
    }

    /** This rank's coordinates, one per dimension. */
    public int[] coordinate() {
        return coord.clone();
    }

    public int[] coordinateOf(int rank) {
        int[] c = new int[shape.length];
        for (int d = shape.length - 1; d >= 0; d--) {
            c[d] = rank % shape[d];
            rank /= shape[d];
        }
        return c;
    }

    public int rankAt(int... coordinate) {
        if (coordinate.length != shape.length) {
            throw new IllegalArgumentException("coordinate " + Arrays.toString(coordinate) + " has "
                    + coordinate.length + " entries; mesh " + Arrays.toString(dimNames) + " has " + shape.length);
        }
        int r = 0;
        for (int d = 0; d < shape.length; d++) {
            if (coordinate[d] < 0 || coordinate[d] >= shape[d]) {
                throw new IllegalArgumentException("coordinate " + Arrays.toString(coordinate) + " is outside mesh "
                        + Arrays.toString(shape));
            }
            r = r * shape[d] + coordinate[d];
        }
        return r;
    }

    /** Closes the communicators this mesh created (not the world). */
    @Override
    public void close() {
        for (Communicator c : owned) {
            c.close();
        }
        owned.clear();
    }

    @Override
    public String toString() {
        return "DeviceMesh(" + Arrays.toString(dimNames) + " = " + Arrays.toString(shape) + ", rank " + globalRank
                + " at " + Arrays.toString(coord) + ")";
    }
}

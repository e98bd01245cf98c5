package dev.sparkmoe.parallel.train;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.io.HfCheckpointReader;
import dev.sparkmoe.core.io.TensorSink;
import dev.sparkmoe.core.io.WeightSource;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.core.model.StatsReducer;
import dev.sparkmoe.core.model.WeightInit;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.optim.AdamW;
import dev.sparkmoe.core.optim.LrSchedule;
import dev.sparkmoe.core.tensor.Region;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import java.io.IOException;
import java.io.UncheckedIOException;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.dtensor.DTensor;
import dev.sparkmoe.parallel.fsdp.FsdpParam;
import dev.sparkmoe.parallel.fsdp.FullyShard;
import dev.sparkmoe.parallel.fsdp.MixedPrecisionPolicy;
import dev.sparkmoe.parallel.fsdp.ShardLayout;
import dev.sparkmoe.parallel.mesh.DeviceMesh;
import dev.sparkmoe.parallel.mesh.ParallelDims;
import dev.sparkmoe.parallel.plan.ModelRegistry;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.logging.Logger;

/**
 * The training loop of one rank: a Qwen3-MoE model parallelised by its registered plan (expert parallelism and
 * FSDP over the device mesh), AdamW on the local shards, an LR schedule, gradient clipping by the global norm and
 * gradient accumulation. Losses are normalised by the global count of predicted tokens and the load-balancing loss
 * uses global router statistics, so every layout computes what a single rank computes on the same global batch.
 *
 * <p>A rank holds only its shards from start to end: the model is built unmaterialised and placed by the plan before
 * any memory is allocated, each rank reads (or initialises) only its slices of the weights, and the final model
 * leaves through {@link #exportModel}, one tensor at a time on rank 0.
 */
public final class DistributedTrainer implements RankTrainer {
    private static final Logger LOG = Logger.getLogger(DistributedTrainer.class.getName());

    private final TrainerSpec spec;
    private final Communicator world;
    private final Qwen3MoeConfig config;
    private final Qwen3MoeModel model;
    private final DeviceMesh mesh;
    private final ParallelDims dims;
    private final FullyShard fsdp;
    private final List<FsdpParam> params;
    private final Map<FsdpParam, AdamW.State> optState = new LinkedHashMap<>();
    private final AdamW adamw;
    private final LrSchedule schedule;
    private final StatsReducer reducer;
    private final ModelExport export;
    private long steps;

    /** Floats per piece when a rank fills its shards from a weight source (4 MiB), as a model's own load. */
    public static final int LOAD_PIECE = Qwen3MoeModel.LOAD_PIECE;

    /**
     * Builds this rank's part of the model with the weights the spec names: the slices of its checkpoint directory
     * that this rank owns, or without one random initialisation from its seed. Collective over {@code world}.
     */
    public DistributedTrainer(TrainerSpec spec, Communicator world, Backend backend) {
        this(spec, world, backend, (WeightSource) null, LOAD_PIECE);
    }

    /**
     * As {@link #DistributedTrainer(TrainerSpec, Communicator, Backend)} with the weights held whole by the caller
     * ({@code fullState}, stacked naming), of which each rank copies only its shards; null: the spec's weights.
     * Collective over {@code world}.
     */
    public DistributedTrainer(TrainerSpec spec, Communicator world, Backend backend, Map<String, Tensor> fullState) {
        this(spec, world, backend, fullState == null ? null : WeightSource.of(fullState), LOAD_PIECE);
    }

    /**
     * Builds this rank's part of the model. The parameters start unmaterialised (shapes only); the weights are
     * checked against them (names, shapes, dtypes; the errors of {@link Qwen3MoeModel#checkWeights}) before anything
     * is allocated; the model's parallel plan places them (experts on dim 0 over ep, FSDP on dim 0 or 1 over its
     * group); then the rank allocates only its own shards on {@code backend} and fills each from {@code weights}
     * (null: the spec's) a region at a time, through a host buffer of {@code pieceFloats}. No rank allocates or
     * reads a tensor it does not own. Collective over {@code world}.
     */
    public DistributedTrainer(TrainerSpec spec, Communicator world, Backend backend, WeightSource weights,
                              int pieceFloats) {
        this.spec = spec;
        this.world = world;
        String modelType = modelType(spec.hfConfigJson());
        this.config = Qwen3MoeConfig.parse(spec.hfConfigJson());
        this.dims = new ParallelDims(spec.dpShard(), spec.ep(), world.size()).validateFor(config.numExperts());
        this.model = Qwen3MoeModel.unmaterialised(config, backend);
        this.fsdp = new FullyShard(spec.fsdpPrefetch());
        WeightSource source = weights != null ? weights : weightsOf(spec, model);
        DeviceMesh built = null;
        try {
            model.checkWeights(source.tensors());
            built = DeviceMesh.forTraining(world, dims);
            this.mesh = built;
            MixedPrecisionPolicy policy = "bf16".equals(spec.precision()) ? MixedPrecisionPolicy.BF16
                    : MixedPrecisionPolicy.FULL_F32;
            if (policy.paramDtype() != dev.sparkmoe.core.tensor.DType.F32 && world.rank() == 0
                    && backend.name().startsWith("cpu")) {
                LOG.info(() -> "mixed precision " + policy + " requested: the " + backend.name() + " backend has no "
                        + "bf16 kernels and computes in f32 (master weights, moments and reductions are f32 in any "
                        + "case)");
            }
            ModelRegistry.parallelizer(modelType).parallelize(model, mesh, dims, policy, fsdp);
            this.params = fsdp.params();
            float[] staging = new float[pieceFloats];
            for (FsdpParam p : params) {
                WeightSource.copyInto(source, p.parameter().name(), new Region(globalShape(p), shardRegion(p)),
                        backend, p.shard(), staging);
            }
        } catch (IOException e) {
            fsdp.close();
            closeMesh(built);
            throw new UncheckedIOException("cannot load checkpoint " + spec.initCheckpointDir() + ": "
                    + e.getMessage(), e);
        } catch (RuntimeException | Error e) {
            fsdp.close();
            closeMesh(built);
            throw e;
        } finally {
            if (weights == null) {
                closeWeights(source);
            }
        }
        model.setActivationCheckpointing(spec.checkpointing());
        for (FsdpParam p : params) {
            optState.put(p, new AdamW.State(backend, p.shard().shape()));
        }
        TrainerSpec.OptimizerSettings o = spec.optimizer();
        this.adamw = new AdamW(new AdamW.Hyper(o.beta1(), o.beta2(), o.eps(), o.weightDecay()));
        this.schedule = new LrSchedule(o.lr(), o.minLr(), o.warmupSteps(), Math.max(1, o.totalSteps()),
                LrSchedule.Decay.parse(o.schedule()));
        this.reducer = buf -> world.allReduceSum(buf, 0, buf.length);
        this.export = new ModelExport(this, fsdp);
        if (world.rank() == 0) {
            LOG.info(() -> "trainer ready: " + dims + ", backend " + backend.name() + ", " + params.size()
                    + " sharded parameters, activation checkpointing " + spec.activationCheckpointing());
        }
    }

    /** The weights a spec names: its checkpoint directory, read by slices, or random initialisation from its seed. */
    private static WeightSource weightsOf(TrainerSpec spec, Qwen3MoeModel model) {
        if (spec.initCheckpointDir() == null) {
            return WeightInit.source(model.parameterSpecs(), spec.seed(), initializerRange(model.config()));
        }
        try {
            return HfCheckpointReader.open(Path.of(spec.initCheckpointDir()), model.config().numExperts());
        } catch (IOException e) {
            throw new UncheckedIOException("cannot load checkpoint " + spec.initCheckpointDir() + ": "
                    + e.getMessage(), e);
        }
    }

    private static void closeWeights(WeightSource source) {
        try {
            source.close();
        } catch (IOException e) {
            LOG.warning(() -> "closing the initial weights failed: " + e);
        }
    }

    private static void closeMesh(DeviceMesh m) {
        if (m != null) {
            try {
                m.close();
            } catch (RuntimeException e) {
                LOG.warning(() -> "closing the device mesh after a failed start failed: " + e);
            }
        }
    }

    /**
     * The config's {@code model_type}, looked up in the registry before the config is parsed so that an unknown
     * type fails with the list of supported ones.
     */
    static String modelType(String hfConfigJson) {
        Object parsed = dev.sparkmoe.core.json.Json.parse(hfConfigJson);
        Object type = parsed instanceof Map ? ((Map<?, ?>) parsed).get("model_type") : null;
        if (!(type instanceof String)) {
            throw new IllegalArgumentException("config.json has no model_type; supported model types: "
                    + ModelRegistry.supported());
        }
        ModelRegistry.parallelizer((String) type);
        return (String) type;
    }

    /** transformers' initializer_range (0.02 when the config does not say). */
    static double initializerRange(Qwen3MoeConfig c) {
        Object r = c.extras().get("initializer_range");
        return r instanceof Number ? ((Number) r).doubleValue() : 0.02;
    }

    public Qwen3MoeModel model() {
        return model;
    }

    public DeviceMesh mesh() {
        return mesh;
    }

    public List<FsdpParam> shardedParameters() {
        return params;
    }

    public Map<FsdpParam, AdamW.State> optimizerState() {
        return optState;
    }

    /** Result of the forward/backward part of a step, before the optimizer runs. */
    public record Gradients(double lmLoss, double auxLoss, long globalPredicted, double gradNorm) {
    }

    /**
     * Collective. Forward and backward over this rank's sequences (split into the configured micro-batches), with
     * gradients reduce-scattered into the shards. Sequences hold seq_len + 1 ids (inputs then shifted labels)
     * unless {@code targets} are given explicitly.
     */
    public Gradients computeGradients(List<int[]> inputs, List<int[]> targets, int seqLen) {
        return computeGradients(inputs, targets, seqLen, null);
    }

    /**
     * As above; {@code afterForward} (when not null) sees each micro-batch's forward pass before backward, with its
     * logits retained (readable until the caller's scope closes) and its router logits.
     */
    public Gradients computeGradients(List<int[]> inputs, List<int[]> targets, int seqLen,
                                      java.util.function.Consumer<Qwen3MoeModel.Pass> afterForward) {
        return computeGradients(inputs, targets, seqLen, afterForward, true);
    }

    /** As above; without {@code norm} the gradient norm is left to the optimizer step (NaN here). */
    private Gradients computeGradients(List<int[]> inputs, List<int[]> targets, int seqLen,
                                       java.util.function.Consumer<Qwen3MoeModel.Pass> afterForward, boolean norm) {
        for (FsdpParam p : params) {
            p.zeroGrad();
        }
        long localPredicted = 0;
        for (int[] t : targets) {
            for (int v : t) {
                localPredicted += v == -100 ? 0 : 1;
            }
        }
        long[] pred = {localPredicted};
        world.allReduceSum(pred, 0, 1);
        long globalPredicted = pred[0];
        int micro = Math.max(1, spec.optimizer().gradAccumSteps());
        double lmSum = 0;
        double auxSum = 0;
        double auxWeight = config.routerAuxLossCoef() / micro;
        for (int m = 0; m < micro; m++) {
            int[] range = DTensor.chunkRange(inputs.size(), micro, m);
            int b = range[1] - range[0];
            int[] ids = new int[b * seqLen];
            int[] tg = new int[b * seqLen];
            for (int i = 0; i < b; i++) {
                System.arraycopy(inputs.get(range[0] + i), 0, ids, i * seqLen, seqLen);
                System.arraycopy(targets.get(range[0] + i), 0, tg, i * seqLen, seqLen);
            }
            Qwen3MoeModel.Pass pass = model.forward(ids, tg, b, seqLen, Math.max(1, globalPredicted), auxWeight,
                    reducer, afterForward != null);
            if (afterForward != null) {
                afterForward.accept(pass);
            }
            lmSum += pass.lmLossSum();
            auxSum += pass.auxLoss();
            model.backward(pass);
        }
        double[] loss = {lmSum};
        world.allReduceSum(loss, 0, 1);
        double gradNorm = Double.NaN;
        if (norm) {
            List<Tensor> grads = new ArrayList<>(params.size());
            for (FsdpParam p : params) {
                grads.add(p.shardGrad());
            }
            gradNorm = globalNorm(model.backend().sumSquares(grads)); // one device round trip
        }
        return new Gradients(loss[0] / Math.max(1, globalPredicted), auxSum / micro, globalPredicted, gradNorm);
    }

    /** The global gradient norm from this rank's sums of squares (summed in parameter order, then over the world). */
    private double globalNorm(double[] squares) {
        double sq = 0;
        for (double v : squares) {
            sq += v;
        }
        double[] norm = {sq};
        world.allReduceSum(norm, 0, 1);
        return Math.sqrt(norm[0]);
    }

    /** Clips by the global norm (as torch.nn.utils.clip_grad_norm_) and takes one AdamW step on the shards. */
    public double applyGradients(double gradNorm) {
        return applyGradients(gradNorm, null)[0];
    }

    /**
     * One AdamW step on the shards ({@link AdamW#step(Backend, List, double, long, float, double[])}: one pass per
     * tensor, the clipping coefficient, where clipping is on and the norm exceeds it, applied as the gradient is read,
     * the compute copies written). With {@code squares} (clipping off) the pass also measures the gradient norm.
     * Returns {lr, the norm measured (NaN without squares)}.
     */
    private double[] applyGradients(double gradNorm, double[] squares) {
        long step = steps + 1;
        double lr = schedule.lr(step);
        double clip = spec.optimizer().clipNorm();
        float gradScale = 1f;
        if (clip > 0) {
            double coef = clip / (gradNorm + 1e-6);
            if (coef < 1.0) {
                gradScale = (float) coef;
            }
        }
        List<Backend.AdamWSlot> slots = new ArrayList<>(params.size());
        for (FsdpParam p : params) {
            AdamW.State s = optState.get(p);
            slots.add(new Backend.AdamWSlot(p.shard(), p.shardGrad(), s.m, s.v, p.computeCopyToUpdate()));
        }
        adamw.step(model.backend(), slots, lr, step, gradScale, squares);
        for (FsdpParam p : params) {
            p.zeroGrad();
        }
        steps = step;
        return new double[] {lr, squares == null ? Double.NaN : globalNorm(squares)};
    }

    @Override
    public StepMetrics step(List<int[]> sequences) {
        long t0 = System.nanoTime();
        int seqLen = spec.seqLen();
        List<int[]> inputs = new ArrayList<>(sequences.size());
        List<int[]> targets = new ArrayList<>(sequences.size());
        for (int[] s : sequences) {
            if (s.length != seqLen + 1) {
                throw new IllegalArgumentException("each sequence must hold seq_len + 1 = " + (seqLen + 1)
                        + " token ids, got " + s.length);
            }
            inputs.add(java.util.Arrays.copyOfRange(s, 0, seqLen));
            targets.add(java.util.Arrays.copyOfRange(s, 1, seqLen + 1));
        }
        Gradients g;
        double[] applied;
        // Clipping needs the norm before the update; without it the optimizer's pass measures the norm (one pass
        // over the gradients fewer). One step is one allocation scope: activations, gathered weights and gradients
        // are released at its end.
        boolean normInStep = !(spec.optimizer().clipNorm() > 0);
        try (Backend.Scope scope = model.backend().openScope()) {
            g = computeGradients(inputs, targets, seqLen, null, !normInStep);
            applied = applyGradients(g.gradNorm(), normInStep ? new double[params.size()] : null);
        }
        return new StepMetrics(steps, g.lmLoss(), g.auxLoss(), applied[0], normInStep ? applied[1] : g.gradNorm(),
                g.globalPredicted(), (System.nanoTime() - t0) / 1e9);
    }

    @Override
    public long stepsTaken() {
        return steps;
    }

    @Override
    public Map<String, Tensor> rankState() {
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (FsdpParam p : params) {
            String n = p.parameter().name();
            AdamW.State s = optState.get(p);
            out.put("param/" + n, hostCopy(p.shard()));
            out.put("exp_avg/" + n, hostCopy(s.m));
            out.put("exp_avg_sq/" + n, hostCopy(s.v));
            out.put("region/" + n, regionTensor(shardRegion(p)));
        }
        out.put("trainer/steps", Tensor.ofLongs(new long[] {steps}, 1));
        return out;
    }

    /** A shard region ([begin, end) per dim of the global tensor) as I32 [dims * 2], as rank states record it. */
    private static Tensor regionTensor(int[][] region) {
        int[] flat = new int[region.length * 2];
        for (int d = 0; d < region.length; d++) {
            flat[2 * d] = region[d][0];
            flat[2 * d + 1] = region[d][1];
        }
        return Tensor.ofInts(flat, flat.length);
    }

    @Override
    public void loadState(Map<String, Tensor> state) {
        List<String> missing = new ArrayList<>();
        for (FsdpParam p : params) {
            for (String k : new String[] {"param/", "exp_avg/", "exp_avg_sq/"}) {
                if (!state.containsKey(k + p.parameter().name())) {
                    missing.add(k + p.parameter().name());
                }
            }
        }
        if (!state.containsKey("trainer/steps")) {
            missing.add("trainer/steps");
        }
        if (!missing.isEmpty()) {
            throw new IllegalArgumentException("rank state is missing " + missing.size() + " entries, e.g. "
                    + missing.subList(0, Math.min(5, missing.size())) + "; was it saved at another layout?");
        }
        for (FsdpParam p : params) {
            checkSamePlacement(p, state);
        }
        for (FsdpParam p : params) {
            String n = p.parameter().name();
            p.setShard(state.get("param/" + n));
            AdamW.State s = optState.get(p);
            Backend be = model.backend();
            be.copyFromHost(state.get("exp_avg/" + n), s.m);
            be.copyFromHost(state.get("exp_avg_sq/" + n), s.v);
        }
        steps = state.get("trainer/steps").longAt(0);
    }

    /**
     * Resumes a state saved at another layout: every saved rank's shards (they carry their regions of the full
     * tensors) are cut to the regions this rank holds now, then loaded as {@link #loadState} loads its own.
     */
    @Override
    public void loadResharded(int savedRanks, java.util.function.IntFunction<Map<String, Tensor>> saved) {
        Map<String, Tensor> state = new LinkedHashMap<>();
        Map<String, long[]> covered = new LinkedHashMap<>();
        for (FsdpParam p : params) {
            String n = p.parameter().name();
            int[][] region = shardRegion(p);
            int[] shape = new int[region.length];
            for (int d = 0; d < region.length; d++) {
                shape[d] = region[d][1] - region[d][0];
            }
            for (String k : new String[] {"param/", "exp_avg/", "exp_avg_sq/"}) {
                state.put(k + n, Tensor.zeros(dev.sparkmoe.core.tensor.DType.F32, shape));
            }
            state.put("region/" + n, regionTensor(region));
            covered.put(n, new long[1]);
        }
        long savedSteps = -1;
        for (int r = 0; r < savedRanks; r++) {
            Map<String, Tensor> from = saved.apply(r);
            Tensor st = from.get("trainer/steps");
            if (st == null) {
                throw new IllegalArgumentException("saved rank " + r + " of " + savedRanks + " has no trainer/steps");
            }
            if (savedSteps >= 0 && st.longAt(0) != savedSteps) {
                throw new IllegalArgumentException("saved ranks disagree on the step: rank " + r + " saved at step "
                        + st.longAt(0) + ", the ranks before it at step " + savedSteps);
            }
            savedSteps = st.longAt(0);
            for (FsdpParam p : params) {
                String n = p.parameter().name();
                Tensor reg = from.get("region/" + n);
                if (reg == null) {
                    throw new IllegalArgumentException("saved rank " + r + " has no region/" + n + ": it was written "
                            + "before rank states recorded their regions and resumes only at its own layout");
                }
                int[][] src = dev.sparkmoe.parallel.checkpoint.Regions.of(reg);
                int[][] dst = shardRegion(p);
                long copied = 0;
                for (String k : new String[] {"param/", "exp_avg/", "exp_avg_sq/"}) {
                    Tensor t = from.get(k + n);
                    if (t == null) {
                        throw new IllegalArgumentException("saved rank " + r + " has no " + k + n);
                    }
                    copied = dev.sparkmoe.parallel.checkpoint.Regions.copyOverlap(t, src, state.get(k + n), dst);
                }
                covered.get(n)[0] += copied;
            }
        }
        for (FsdpParam p : params) {
            String n = p.parameter().name();
            long want = dev.sparkmoe.parallel.checkpoint.Regions.size(shardRegion(p));
            if (covered.get(n)[0] != want) {
                throw new IllegalArgumentException("the " + savedRanks + " saved ranks cover " + covered.get(n)[0]
                        + " of the " + want + " elements of this rank's shard of " + n + " "
                        + java.util.Arrays.toString(regionTensor(shardRegion(p)).ints()) + ": the saved state is "
                        + "incomplete or belongs to another model");
            }
        }
        state.put("trainer/steps", Tensor.ofLongs(new long[] {Math.max(0, savedSteps)}, 1));
        loadState(state);
    }

    /**
     * A rank state restores only at the shard placement it was saved with: its recorded region (states written
     * before regions were recorded: its shapes) must be this rank's. Checked for every parameter before anything
     * is loaded, so a refused state changes nothing.
     */
    private void checkSamePlacement(FsdpParam p, Map<String, Tensor> state) {
        String n = p.parameter().name();
        int[][] mine = shardRegion(p);
        Tensor region = state.get("region/" + n);
        String saved = null;
        if (region != null) {
            if (!java.util.Arrays.equals(region.ints(), regionTensor(mine).ints())) {
                saved = "covers " + java.util.Arrays.toString(region.ints());
            }
        } else {
            for (String k : new String[] {"param/", "exp_avg/", "exp_avg_sq/"}) {
                if (!java.util.Arrays.equals(state.get(k + n).shape(), p.shard().shape())) {
                    saved = "has shape " + java.util.Arrays.toString(state.get(k + n).shape()) + " (" + k + ")";
                    break;
                }
            }
        }
        if (saved != null) {
            throw new IllegalStateException("rank state: the shard of " + n + " " + saved + ", but this rank's "
                    + "shard of " + java.util.Arrays.toString(globalShape(p)) + " covers "
                    + java.util.Arrays.toString(regionTensor(mine).ints()) + " (shape "
                    + java.util.Arrays.toString(p.shard().shape()) + "): it was saved with another shard placement "
                    + "(spark-moe before 2026-11-27 split stacked experts on dim 1; now on dim 0 when the FSDP group "
                    + "has no more ranks than local experts). Resume it with the version that wrote it, or start "
                    + "afresh in another checkpoint directory");
        }
    }

    /** A host copy that shares nothing with the trainer's live buffers. */
    private Tensor hostCopy(Tensor t) {
        Tensor h = model.backend().download(t);
        return h == t ? t.copy() : h;
    }

    /**
     * Collective. The full value of one sharded tensor (a weight, an optimizer moment, a gradient), on every rank, in
     * F32 ({@link ShardLayout#allGather} widens a bf16 gradient first: exact).
     */
    public Tensor gatherFull(FsdpParam p, Tensor shardOfP) {
        Backend be = model.backend();
        Tensor local = p.layout().allGather(be, p.group(), shardOfP);
        Parameter param = p.parameter();
        if (isExpertParam(param) && dims.epEnabled() && model.moeLayerCount() > 0) {
            Communicator ep = mesh.get(DeviceMesh.EP).communicator();
            int[] s = local.shape();
            int[] full = s.clone();
            full[0] = s[0] * ep.size();
            Tensor all = new ShardLayout(full, 0, ep.size()).allGather(be, ep, local);
            be.release(local);
            return all;
        }
        return local;
    }

    /**
     * Where this rank's shard of {@code p} sits in the full (stacked) tensor: {@code [dim][begin, end)}. Experts
     * under expert parallelism are split on dim 0 by the ep rank and on dim 1 by FSDP; everything else by FSDP on
     * its shard dim.
     */
    public int[][] shardRegion(FsdpParam p) {
        int[] local = p.layout().fullShape(); // the parameter's own shape, unless it computes on its shard
        int[][] region = new int[local.length][];
        for (int d = 0; d < local.length; d++) {
            region[d] = new int[] {0, local[d]};
        }
        region[p.layout().dim()] = p.layout().range(p.group().rank());
        if (isExpertParam(p.parameter()) && dims.epEnabled()) {
            int epRank = mesh.get(DeviceMesh.EP).localRank();
            int first = epRank * local[0]; // this rank's experts; FSDP may split them further on dim 0
            region[0] = new int[] {first + region[0][0], first + region[0][1]};
        }
        return region;
    }

    /** The full (stacked) shape of {@code p}. */
    public int[] globalShape(FsdpParam p) {
        int[] s = p.layout().fullShape(); // the parameter's own shape, unless it computes on its shard
        if (isExpertParam(p.parameter()) && dims.epEnabled()) {
            s[0] = config.numExperts();
        }
        return s;
    }

    static boolean isExpertParam(Parameter p) {
        return p.name().contains(".mlp.experts.");
    }

    /**
     * Collective. Full weights with stacked experts, gathered whole on every rank: for tests of small models (a
     * model is saved through {@link #exportModel}, which never makes it whole).
     */
    public Map<String, Tensor> fullStackedState() {
        Map<String, Tensor> out = new java.util.TreeMap<>();
        for (FsdpParam p : params) {
            out.put(p.parameter().name(), model.backend().download(gatherFull(p, p.shard())));
        }
        return out;
    }

    @Override
    public List<TensorSpec> modelTensors() {
        return export.hubTensors("");
    }

    /** Collective. Streams the weights to rank 0 in Hub naming ({@link RankTrainer#exportModel}). */
    @Override
    public void exportModel(TensorSink sink) throws IOException {
        exportModel("", sink);
    }

    /** Collective. {@link #exportModel(TensorSink)} with each name prefixed with {@code prefix}. */
    public void exportModel(String prefix, TensorSink sink) throws IOException {
        export.export(FsdpParam::shard, prefix, sink);
    }

    /**
     * Collective. Streams the accumulated gradients to rank 0 as {@link #exportModel} streams the weights, each
     * name prefixed with {@code prefix}.
     */
    public void exportGradients(String prefix, TensorSink sink) throws IOException {
        export.export(FsdpParam::shardGrad, prefix, sink);
    }

    @Override
    public String hfConfigJson() {
        return config.toJson();
    }

    public Qwen3MoeConfig config() {
        return config;
    }

    public ParallelDims dims() {
        return dims;
    }

    public Communicator world() {
        return world;
    }

    @Override
    public void close() {
        try {
            fsdp.close();
        } finally {
            mesh.close();
        }
    }
}

package dev.sparkmoe.parallel.plan;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.MemoryTracker;
import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.model.ActivationCheckpointing;
import dev.sparkmoe.core.model.Fixtures;
import dev.sparkmoe.core.model.LmHead;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.core.model.StatsReducer;
import dev.sparkmoe.core.model.TokenEmbedding;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.DeferringCommunicator;
import dev.sparkmoe.parallel.comm.ForwardingCommunicator;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import dev.sparkmoe.parallel.comm.Pending;
import dev.sparkmoe.parallel.fsdp.FsdpParam;
import dev.sparkmoe.parallel.fsdp.FsdpUnit;
import dev.sparkmoe.parallel.fsdp.FullyShard;
import dev.sparkmoe.parallel.fsdp.MixedPrecisionPolicy;
import dev.sparkmoe.parallel.mesh.DeviceMesh;
import dev.sparkmoe.parallel.mesh.ParallelDims;
import java.nio.file.Files;
import java.time.Duration;
import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.TreeMap;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * The Qwen3-MoE plan makes the head (final norm and LM head) an FSDP unit of its own, as torchtitan's
 * {@code fully_shard([model.norm, model.output])}, and the untied embedding another, as its
 * {@code fully_shard(model.tok_embeddings)}: the root then holds nothing (tied: the embedding, which is the LM head
 * weight). Its overlap, on the fixture's config (untied, and tied) with the collectives deferred until completed
 * ({@link DeferringCommunicator}) and each started group and each unit's hooks logged in order, in the second step
 * (the first records the units' order):
 * <ul>
 *   <li>forward: the embedding is gathered first, alone; the head's all-gather starts while the last decoder layer
 *       computes (prefetch); the head, the embedding and the last layer are gathered once in the step, the other
 *       layers twice (forward, backward);</li>
 *   <li>backward: the head and the embedding are not gathered again (their backward reads no weight: the head's
 *       forward computed its gradients) and hold no gathered weight when their backward starts; the head's
 *       reduce-scatter starts at the end of its own backward, before the last layer's backward begins, and is
 *       completed before that layer's backward ends; the embedding's starts last.</li>
 * </ul>
 * The gradients gathered from the shards match one rank's on the global batch; with gradient accumulation every
 * micro-batch gathers the head and the embedding once.
 */
class HeadUnitTest {
    static final int SEQ = 8;

    @ParameterizedTest(name = "dp_shard={0}, ep={1}, tied={2}")
    @CsvSource({"2,1,false", "2,1,true", "4,2,false", "4,2,true"})
    void headIsAUnitGatheredUnderTheLastLayerAndReducedBeforeTheLayersBackward(int dp, int ep, boolean tied)
            throws Exception {
        Qwen3MoeConfig config = config(tied);
        int last = config.numHiddenLayers() - 1;
        List<int[]> seqs = new ArrayList<>();
        SplittableRandom r = new SplittableRandom(5);
        for (int s = 0; s < dp; s++) {
            int[] seq = new int[SEQ + 1];
            for (int t = 0; t <= SEQ; t++) {
                seq[t] = r.nextInt(config.vocabSize());
            }
            seqs.add(seq);
        }
        Map<String, Tensor> reference = worldOneGrads(config, seqs);

        List<Object[]> out = InJvmRanks.run(dp, Duration.ofSeconds(60), c -> rank(c, config, dp, ep, seqs,
                FullyShard.DEFAULT_PREFETCH));
        List<String> headNames = tied ? List.of("model.norm.weight") : List.of("model.norm.weight", "lm_head.weight");
        String head = headNames.toString();
        // what the head's unit gathers and reduce-scatters: the final norm (an untied LM head is vocabulary-parallel:
        // each rank computes on its rows of it, never gathered, its gradient never reduce-scattered)
        String gathered = List.of("model.norm.weight").toString();
        String embed = List.of("model.embed_tokens.weight").toString();
        for (Object[] o : out) {
            @SuppressWarnings("unchecked")
            List<String> units = (List<String>) o[0];
            @SuppressWarnings("unchecked")
            List<String> log = (List<String>) o[1];
            @SuppressWarnings("unchecked")
            Map<String, Tensor> grads = (Map<String, Tensor>) o[2];
            int open = (Integer) o[3];

            // the units: ..., the head (final norm, untied LM head), the embedding (untied), the root last (tied: it
            // holds the embedding)
            if (tied) {
                assertEquals(LmHead.PATH + " " + head, units.get(units.size() - 2), "units " + units);
                assertEquals("<root> " + embed, units.get(units.size() - 1), "units " + units);
            } else {
                assertEquals(LmHead.PATH + " " + head, units.get(units.size() - 3), "units " + units);
                assertEquals(TokenEmbedding.PATH + " " + embed, units.get(units.size() - 2), "units " + units);
                assertEquals("<root> []", units.get(units.size() - 1), "units " + units);
            }

            String msg = "log of step 2:\n" + String.join("\n", log);
            // forward: the root gathers the embedding alone, first; the head's gather starts under the last layer
            assertEquals("AG+ " + embed, log.get(0), msg);
            int headGather = index(log, "AG+ " + gathered, msg);
            // (2 units ahead, the default: the last layer's own hook, which runs before its "fwd+", starts it)
            assertTrue(index(log, "fwd- model.layers." + (last - 1), msg) < headGather
                    && headGather < index(log, "fwd- model.layers." + last, msg),
                    "the head's all-gather did not start during the last layer's forward\n" + msg);
            assertTrue(index(log, "AG- " + gathered, msg) < index(log, "fwd+ head", msg), msg);
            // two units ahead: the last layer's experts start gathering while the layer before it still computes
            int lastExperts = -1;
            for (int i = 0; i < log.size() && lastExperts < 0; i++) {
                if (log.get(i).startsWith("AG+ [model.layers." + last + ".mlp.experts.")) {
                    lastExperts = i;
                }
            }
            assertTrue(lastExperts >= 0 && lastExperts < index(log, "fwd- model.layers." + (last - 1), msg),
                    "the last layer's experts were not gathered two units ahead\n" + msg);
            assertEquals(1, count(log, "AG+ " + gathered), "the head must be gathered once in a step\n" + msg);
            assertEquals(1, count(log, "AG+ " + embed), "the embedding must be gathered once in a step\n" + msg);
            // neither is held into the backward: both resharded after their forward
            assertEquals("held []", log.get(index(log, "bwd+ head", msg) + 1), msg);
            assertEquals(1, count(log, "RS+ " + gathered), msg);
            assertEquals(1, count(log, "RS+ " + embed), msg);
            // the last layer keeps its weights from forward to backward: each of its units gathers once, the
            // layer before it twice (forward, backward)
            int lastGathers = gathersOfLayer(log, last);
            assertTrue(lastGathers > 0 && 2 * lastGathers == gathersOfLayer(log, last - 1),
                    "the last layer was gathered again for its backward\n" + msg);
            // backward: the head's reduce-scatter starts right after its backward, before the layers'
            int headReduce = index(log, "RS+ " + gathered, msg);
            assertTrue(index(log, "bwd- head", msg) < headReduce
                    && headReduce < index(log, "bwd+ model.layers." + last, msg),
                    "the head's reduce-scatter did not start between its backward and the last layer's\n" + msg);
            assertTrue(index(log, "RS- " + gathered, msg) < index(log, "bwd- model.layers." + last, msg),
                    "the head's reduce-scatter was not completed under the last layer's backward\n" + msg);
            int rootReduce = index(log, "RS+ " + embed, msg);
            assertTrue(index(log, "bwd- model.layers.0", msg) < rootReduce, msg);
            assertEquals(0, open, "started collectives never completed");

            assertEquals(reference.keySet(), grads.keySet());
            for (String k : reference.keySet()) {
                Fixtures.assertClose("grad " + k, reference.get(k), grads.get(k), 1e-5);
            }
        }
    }

    /**
     * The prefetch depth ({@code training.fsdp_prefetch}) decides how early a unit's all-gather starts: one unit ahead,
     * the last layer's experts start gathering only once the last layer itself is gathered (after the layer before it
     * has computed); two or three ahead, while the layer before it still computes. The gradients are the same.
     */
    @ParameterizedTest(name = "prefetch={0}")
    @CsvSource({"1", "2", "3"})
    void thePrefetchDepthDecidesHowEarlyTheNextUnitsGather(int prefetch) throws Exception {
        Qwen3MoeConfig config = config(false);
        int last = config.numHiddenLayers() - 1, dp = 2;
        List<int[]> seqs = new ArrayList<>();
        SplittableRandom r = new SplittableRandom(7);
        for (int s = 0; s < dp; s++) {
            int[] seq = new int[SEQ + 1];
            for (int t = 0; t <= SEQ; t++) {
                seq[t] = r.nextInt(config.vocabSize());
            }
            seqs.add(seq);
        }
        Map<String, Tensor> reference = worldOneGrads(config, seqs);
        List<Object[]> out = InJvmRanks.run(dp, Duration.ofSeconds(60), c -> rank(c, config, dp, 1, seqs, prefetch));
        for (Object[] o : out) {
            @SuppressWarnings("unchecked")
            List<String> log = (List<String>) o[1];
            @SuppressWarnings("unchecked")
            Map<String, Tensor> grads = (Map<String, Tensor>) o[2];
            String msg = "log of step 2 with prefetch " + prefetch + ":\n" + String.join("\n", log);
            int lastExperts = -1;
            for (int i = 0; i < log.size() && lastExperts < 0; i++) {
                if (log.get(i).startsWith("AG+ [model.layers." + last + ".mlp.experts.")) {
                    lastExperts = i;
                }
            }
            int before = index(log, "fwd- model.layers." + (last - 1), msg);
            assertTrue(lastExperts >= 0, msg);
            if (prefetch == 1) {
                assertTrue(before < lastExperts && lastExperts < index(log, "fwd+ model.layers." + last, msg),
                        "one unit ahead: the last layer's experts gather when the last layer is gathered\n" + msg);
            } else {
                assertTrue(lastExperts < before, "the last layer's experts were not gathered " + prefetch
                        + " units ahead\n" + msg);
            }
            assertEquals(0, (Integer) o[3], "started collectives never completed");
            for (String k : reference.keySet()) {
                Fixtures.assertClose("grad " + k, reference.get(k), grads.get(k), 1e-5);
            }
        }
    }

    /**
     * Gradient accumulation over two micro-batches: each micro-batch's forward gathers the head and the embedding
     * once, neither is held into its backward, and the accumulated gradients match one rank's over the same
     * micro-batches.
     */
    @ParameterizedTest(name = "tied={0}")
    @CsvSource({"false", "true"})
    void eachMicroBatchGathersTheHeadAndTheEmbeddingOnce(boolean tied) throws Exception {
        Qwen3MoeConfig config = config(tied);
        int dp = 2, micro = 2;
        List<int[]> seqs = new ArrayList<>();
        SplittableRandom r = new SplittableRandom(13);
        for (int s = 0; s < dp * micro; s++) {
            int[] seq = new int[SEQ + 1];
            for (int t = 0; t <= SEQ; t++) {
                seq[t] = r.nextInt(config.vocabSize());
            }
            seqs.add(seq);
        }
        Map<String, Tensor> reference = worldOneGrads(config, seqs, micro);
        List<Object[]> out = InJvmRanks.run(dp, Duration.ofSeconds(60), c -> rank(c, config, dp, 1, seqs,
                FullyShard.DEFAULT_PREFETCH, ActivationCheckpointing.NONE, micro));
        String head = List.of("model.norm.weight").toString(); // an untied LM head is vocabulary-parallel, not gathered
        String embed = List.of("model.embed_tokens.weight").toString();
        for (Object[] o : out) {
            @SuppressWarnings("unchecked")
            List<String> log = (List<String>) o[1];
            @SuppressWarnings("unchecked")
            Map<String, Tensor> grads = (Map<String, Tensor>) o[2];
            String msg = "log of step 2:\n" + String.join("\n", log);
            assertEquals(micro, count(log, "AG+ " + head), msg);
            assertEquals(micro, count(log, "AG+ " + embed), msg);
            assertEquals(micro, count(log, "held []"), msg);
            assertEquals(0, (Integer) o[3], "started collectives never completed");
            for (String k : reference.keySet()) {
                Fixtures.assertClose("grad " + k, reference.get(k), grads.get(k), 1e-5);
            }
        }
    }

    /** Started all-gathers of the units of decoder layer {@code layer} (its experts' and its own). */
    private static int gathersOfLayer(List<String> log, int layer) {
        int n = 0;
        for (String l : log) {
            n += l.startsWith("AG+ [model.layers." + layer + ".") ? 1 : 0;
        }
        return n;
    }

    static Qwen3MoeConfig config(boolean tied) throws Exception {
        Map<String, Object> json = Json.parseObject(Files.readString(Fixtures.tiny().resolve("config.json")));
        json.put("tie_word_embeddings", tied);
        return Qwen3MoeConfig.parse(Json.write(json, false));
    }

    static Qwen3MoeModel model(Qwen3MoeConfig config, Backend be) {
        Qwen3MoeModel model = new Qwen3MoeModel(config, be);
        model.initRandom(11, 0.05);
        return model;
    }

    static int[][] batch(List<int[]> seqs) {
        int[] ids = new int[seqs.size() * SEQ];
        int[] targets = new int[ids.length];
        for (int s = 0; s < seqs.size(); s++) {
            System.arraycopy(seqs.get(s), 0, ids, s * SEQ, SEQ);
            System.arraycopy(seqs.get(s), 1, targets, s * SEQ, SEQ);
        }
        return new int[][] {ids, targets};
    }

    /** One rank's gradients of the whole batch, non-expert parameters (those FSDP shards on the fsdp mesh). */
    static Map<String, Tensor> worldOneGrads(Qwen3MoeConfig config, List<int[]> seqs) {
        return worldOneGrads(config, seqs, 1);
    }

    /**
     * As above in {@code micro} micro-batches: micro-batch j holds sequences [j * S / micro, (j + 1) * S / micro) of
     * the S, each rank's j-th sequence at world size S / micro.
     */
    static Map<String, Tensor> worldOneGrads(Qwen3MoeConfig config, List<int[]> seqs, int micro) {
        Qwen3MoeModel model = model(config, new CpuBackend());
        int per = seqs.size() / micro;
        for (int j = 0; j < micro; j++) {
            int[][] b = batch(seqs.subList(j * per, (j + 1) * per));
            Qwen3MoeModel.Pass pass = model.forward(b[0], b[1], per, SEQ, seqs.size() * SEQ, 0.01 / micro,
                    StatsReducer.LOCAL);
            model.backward(pass);
        }
        Map<String, Tensor> out = new TreeMap<>();
        for (Parameter p : model.parameters()) {
            if (!p.name().contains(".mlp.experts.")) {
                out.put(p.name(), p.grad().copy());
            }
        }
        return out;
    }

    /** Units (path and parameters), the log of step 2, its gathered non-expert gradients, collectives left open. */
    static Object[] rank(Communicator c, Qwen3MoeConfig config, int dp, int ep, List<int[]> seqs, int prefetch) {
        return rank(c, config, dp, ep, seqs, prefetch, ActivationCheckpointing.NONE);
    }

    /** As above, with the model's layers keeping what {@code checkpointing} says. */
    static Object[] rank(Communicator c, Qwen3MoeConfig config, int dp, int ep, List<int[]> seqs, int prefetch,
                         ActivationCheckpointing checkpointing) {
        return rank(c, config, dp, ep, seqs, prefetch, checkpointing, 1);
    }

    /**
     * As above in {@code micro} micro-batches of one sequence per rank: rank r's j-th is sequence j * dp + r. The log
     * also says, when the head's backward starts, which of the embedding's and the head's weights are gathered
     * ("held [names]").
     */
    static Object[] rank(Communicator c, Qwen3MoeConfig config, int dp, int ep, List<int[]> seqs, int prefetch,
                         ActivationCheckpointing checkpointing, int micro) {
        List<String> log = new ArrayList<>();
        Map<Tensor, String> gradOwner = new IdentityHashMap<>();
        Backend be = MemoryTracker.wrap(new CpuBackend());
        Qwen3MoeModel model = model(config, be);
        model.setActivationCheckpointing(checkpointing);
        DeferringCommunicator deferring = new DeferringCommunicator(c);
        Recording world = new Recording(deferring, log, model, gradOwner);
        ParallelDims dims = new ParallelDims(dp, ep, c.size()).validateFor(config.numExperts());
        try (DeviceMesh mesh = DeviceMesh.forTraining(world, dims)) {
            FullyShard fsdp = new FullyShard(prefetch);
            ModelRegistry.parallelizer("qwen3_moe").parallelize(model, mesh, dims, MixedPrecisionPolicy.FULL_F32,
                    fsdp);
            List<String> units = new ArrayList<>();
            for (FsdpUnit u : fsdp.units()) {
                units.add(u.path() + " " + names(u.params()));
            }
            for (Module m : model.modules()) { // after FSDP's hooks: before-hooks run after its, after-hooks before
                m.addHook(new dev.sparkmoe.core.nn.LoggingHook(log, m, x -> {
                    for (Parameter p : x.parameters()) { // the full gradients FSDP reduce-scatters next
                        if (p.hasGrad()) {
                            gradOwner.put(p.grad(), p.name());
                        }
                    }
                }));
            }
            model.head().addHook(new dev.sparkmoe.core.nn.ModuleHook() {
                @Override
                public void beforeBackward(Module m) {
                    List<String> held = new ArrayList<>();
                    for (Parameter p : model.embedding().parameters()) {
                        held.add(p.isMaterialised() ? p.name() : null);
                    }
                    for (Parameter p : model.head().parameters()) {
                        held.add(p.isMaterialised() ? p.name() : null);
                    }
                    held.removeIf(java.util.Objects::isNull);
                    log.add("held " + held);
                }
            });
            StatsReducer reducer = buf -> world.allReduceSum(buf, 0, buf.length);
            List<String> stepLog = null;
            Map<String, Tensor> grads = new TreeMap<>();
            for (int step = 0; step < 2; step++) {
                log.clear();
                // one step, one allocation scope, as DistributedTrainer.step: the gradient shards are read and
                // dropped in it (reading one completes its reduce-scatter)
                try (Backend.Scope scope = be.openScope()) {
                    for (int j = 0; j < micro; j++) {
                        int first = j * dp + c.rank();
                        int[][] b = batch(seqs.subList(first, first + 1));
                        Qwen3MoeModel.Pass pass = model.forward(b[0], b[1], 1, SEQ, seqs.size() * SEQ, 0.01 / micro,
                                reducer);
                        model.backward(pass);
                    }
                    stepLog = List.copyOf(log);
                    for (FsdpParam p : fsdp.params()) {
                        Tensor shardGrad = p.shardGrad();
                        if (step == 1 && !p.parameter().name().contains(".mlp.experts.")) {
                            Tensor full = p.layout().allGather(be, p.group(), shardGrad);
                            grads.put(p.parameter().name(), be.download(full).copy());
                        }
                    }
                    for (FsdpParam p : fsdp.params()) {
                        p.zeroGrad();
                    }
                }
            }
            return new Object[] {units, stepLog, grads, deferring.open()};
        }
    }

    static List<String> names(List<FsdpParam> ps) {
        List<String> out = new ArrayList<>();
        for (FsdpParam p : ps) {
            out.add(p.parameter().name());
        }
        return out;
    }

    static int index(List<String> log, String entry, String msg) {
        int i = log.indexOf(entry);
        assertTrue(i >= 0, "no '" + entry + "' in the " + msg);
        return i;
    }

    static int count(List<String> log, String entry) {
        int n = 0;
        for (String s : log) {
            n += s.equals(entry) ? 1 : 0;
        }
        return n;
    }

    /**
     * Logs each started group of collectives as "AG+ [names]" / "RS+ [names]" and its completion as "AG- [names]" /
     * "RS- [names]": an all-gather's parameters are those whose value is a receive buffer, a reduce-scatter's those
     * whose gradient (as the module hooks recorded it) is a send buffer. Splits log into the same list.
     */
    static final class Recording extends ForwardingCommunicator {
        private final List<String> log;
        private final Qwen3MoeModel model;
        private final Map<Tensor, String> gradOwner;

        Recording(Communicator inner, List<String> log, Qwen3MoeModel model, Map<Tensor, String> gradOwner) {
            super(inner);
            this.log = log;
            this.model = model;
            this.gradOwner = gradOwner;
        }

        @Override
        public Pending allGatherStart(Tensor send, int sOff, int len, Tensor recv, int rOff) {
            log.add("AG+ single");
            return inner.allGatherStart(send, sOff, len, recv, rOff);
        }

        @Override
        public Pending reduceScatterSumStart(Tensor send, int sOff, Tensor recv, int rOff, int recvLen) {
            log.add("RS+ single");
            return inner.reduceScatterSumStart(send, sOff, recv, rOff, recvLen);
        }

        @Override
        public Pending allGatherStart(List<Part> parts) {
            return logged("AG", gathered(parts), inner.allGatherStart(parts));
        }

        @Override
        public Pending allGatherStart(List<Part> parts, DType wire) {
            return logged("AG", gathered(parts), inner.allGatherStart(parts, wire));
        }

        @Override
        public Pending reduceScatterSumStart(List<Part> parts) {
            List<String> names = new ArrayList<>();
            for (Part p : parts) {
                names.add(gradOwner.getOrDefault(p.send(), "?"));
            }
            return logged("RS", names, inner.reduceScatterSumStart(parts));
        }

        private List<String> gathered(List<Part> parts) {
            List<String> names = new ArrayList<>();
            for (Part part : parts) {
                String name = "?";
                for (Parameter p : model.parameters()) {
                    if (p.isMaterialised() && p.value() == part.recv()) {
                        name = p.name();
                    }
                }
                names.add(name);
            }
            return names;
        }

        private Pending logged(String kind, List<String> names, Pending started) {
            log.add(kind + "+ " + names);
            boolean[] done = {false};
            return () -> {
                if (!done[0]) {
                    done[0] = true;
                    log.add(kind + "- " + names);
                }
                started.complete();
            };
        }

        @Override
        public Communicator split(int color, int key, String name) {
            return new Recording(inner.split(color, key, name), log, model, gradOwner);
        }
    }
}

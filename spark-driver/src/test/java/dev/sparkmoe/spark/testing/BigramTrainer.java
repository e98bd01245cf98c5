package dev.sparkmoe.spark.testing;

import com.fasterxml.jackson.databind.ObjectMapper;
import dev.sparkmoe.core.io.TensorSink;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.train.RankTrainer;
import dev.sparkmoe.parallel.train.StepMetrics;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.io.IOException;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.TreeMap;

/**
 * A test double of the real trainer that does real, deterministic arithmetic: a bigram language model (logits of
 * the next token = row W[current token], W of shape [V, V]) trained by SGD with momentum, data-parallel over the
 * world communicator (gradients summed across ranks, normalised by the global token count), with a random
 * per-step learning-rate jitter drawn from an RNG whose state is part of the rank state. Resuming from
 * {@link #rankState()} continues bit for bit.
 */
public final class BigramTrainer implements RankTrainer {
    private final TrainerSpec spec;
    private final Communicator comm;
    private final int vocab;
    private final float[] w;        // [V, V]
    private final float[] momentum; // [V, V]
    private long step;
    private long rng;
    private final Faults.Plan faults;

    BigramTrainer(TrainerSpec spec, Communicator comm, Faults.Plan faults) {
        this.spec = spec;
        this.comm = comm;
        this.faults = faults;
        try {
            this.vocab = new ObjectMapper().readTree(spec.hfConfigJson()).path("vocab_size").asInt();
        } catch (java.io.IOException e) {
            throw new IllegalArgumentException(e);
        }
        this.w = new float[vocab * vocab];
        this.momentum = new float[vocab * vocab];
        SplittableRandom r = new SplittableRandom(spec.seed());
        for (int i = 0; i < w.length; i++) {
            w[i] = (float) (r.nextGaussian() * 0.02);
        }
        this.rng = spec.seed() ^ 0x5DEECE66DL;
        comm.barrier(); // creation is collective
    }

    @Override
    public StepMetrics step(List<int[]> sequences) {
        long t0 = System.nanoTime();
        if (faults != null) {
            faults.maybeFail(comm.rank(), step + 1, "step");
        }
        float[] grad = new float[vocab * vocab];
        double[] loss = {0};
        long[] tokens = {0};
        float[] p = new float[vocab];
        for (int[] s : sequences) {
            if (s.length != spec.seqLen() + 1) {
                throw new IllegalArgumentException("sequence of " + s.length + " ids, expected " + (spec.seqLen() + 1));
            }
            for (int t = 0; t < spec.seqLen(); t++) {
                int x = s[t];
                int y = s[t + 1];
                int row = x * vocab;
                float max = Float.NEGATIVE_INFINITY;
                for (int j = 0; j < vocab; j++) {
                    max = Math.max(max, w[row + j]);
                }
                double z = 0;
                for (int j = 0; j < vocab; j++) {
                    p[j] = (float) Math.exp(w[row + j] - max);
                    z += p[j];
                }
                for (int j = 0; j < vocab; j++) {
                    p[j] = (float) (p[j] / z);
                    grad[row + j] += p[j];
                }
                grad[row + y] -= 1f;
                loss[0] += -Math.log(Math.max(p[y], 1e-30));
                tokens[0]++;
            }
        }
        comm.allReduceSum(grad, 0, grad.length);
        comm.allReduceSum(loss, 0, 1);
        comm.allReduceSum(tokens, 0, 1);
        long n = Math.max(1, tokens[0]);
        double norm2 = 0;
        for (int i = 0; i < grad.length; i++) {
            grad[i] /= n;
            norm2 += (double) grad[i] * grad[i];
        }
        double gnorm = Math.sqrt(norm2);
        double clip = spec.optimizer().clipNorm();
        float scale = clip > 0 && gnorm > clip ? (float) (clip / gnorm) : 1f;
        rng = rng * 6364136223846793005L + 1442695040888963407L;
        double jitter = 1.0 + ((rng >>> 40) % 11 - 5) * 0.002;
        double lr = lr(step) * jitter;
        for (int i = 0; i < w.length; i++) {
            momentum[i] = 0.9f * momentum[i] + grad[i] * scale;
            w[i] -= (float) (lr * momentum[i]);
        }
        step++;
        return new StepMetrics(step, loss[0] / n, 0.0, lr, gnorm, tokens[0], (System.nanoTime() - t0) / 1e9);
    }

    private double lr(long s) {
        TrainerSpec.OptimizerSettings o = spec.optimizer();
        if (s < o.warmupSteps()) {
            return o.lr() * (s + 1) / o.warmupSteps();
        }
        if ("constant".equals(o.schedule())) {
            return o.lr();
        }
        double frac = Math.min(1, (double) (s - o.warmupSteps()) / Math.max(1, o.totalSteps() - o.warmupSteps()));
        double k = "linear".equals(o.schedule()) ? 1 - frac : 0.5 * (1 + Math.cos(Math.PI * frac));
        return o.minLr() + (o.lr() - o.minLr()) * k;
    }

    @Override
    public long stepsTaken() {
        return step;
    }

    @Override
    public Map<String, Tensor> rankState() {
        if (faults != null) {
            faults.maybeFail(comm.rank(), step, "checkpoint");
        }
        Map<String, Tensor> m = new TreeMap<>();
        m.put("w", Tensor.of(w.clone(), vocab, vocab));
        m.put("momentum", Tensor.of(momentum.clone(), vocab, vocab));
        m.put("step", Tensor.ofLongs(new long[] {step}, 1));
        m.put("rng", Tensor.ofLongs(new long[] {rng}, 1));
        return m;
    }

    @Override
    public void loadState(Map<String, Tensor> state) {
        System.arraycopy(state.get("w").floats(), 0, w, 0, w.length);
        System.arraycopy(state.get("momentum").floats(), 0, momentum, 0, momentum.length);
        step = state.get("step").longs()[0];
        rng = state.get("rng").longs()[0];
    }

    @Override
    public List<TensorSpec> modelTensors() {
        return List.of(new TensorSpec("lm_head.weight", DType.F32, new int[] {vocab, vocab}));
    }

    /** Collective (a barrier): the weights are replicated, so rank 0 writes its own. */
    @Override
    public void exportModel(TensorSink sink) throws IOException {
        comm.barrier();
        if (comm.rank() == 0) {
            sink.write("lm_head.weight", new int[] {vocab, vocab}, w, 0);
        }
    }

    @Override
    public String hfConfigJson() {
        return spec.hfConfigJson();
    }

    @Override
    public void close() {
    }
}

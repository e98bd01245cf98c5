package dev.sparkmoe.core.bench;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.core.model.StatsReducer;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.optim.AdamW;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.AuxCounters;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.Warmup;

/**
 * One full training step on the CPU backend: forward with both losses, backward, AdamW on every parameter, grads
 * zeroed for the next step. "fixture" is the tiny fixture config at batch 2 x 16; "m20" the 18.4M config (see
 * {@link BenchConfigs#m20()}) at batch 4 x 256. Random init (normal(0, 0.02), norms 1), random token ids, targets
 * are the next token (-100 at each sequence end).
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 2, time = 5)
@Measurement(iterations = 3, time = 5)
@Fork(value = 1, jvmArgsAppend = {"-Xmx8g"})
@State(Scope.Thread)
public class TrainStepBench {

    @Param({"fixture:2x16", "m20:4x256"})
    public String setup;

    Qwen3MoeModel model;
    List<Parameter> params;
    AdamW.State[] states;
    AdamW opt;
    int[] ids;
    int[] targets;
    int batch;
    int seqLen;
    int predicted;
    long step;

    /** Tokens processed, normalised to a rate by JMH (tokens/s in this benchmark's time unit). */
    @AuxCounters(AuxCounters.Type.OPERATIONS)
    @State(Scope.Thread)
    public static class Tokens {
        public long tokens;

        @Setup(Level.Iteration)
        public void reset() {
            tokens = 0;
        }
    }

    @Setup(Level.Trial)
    public void setUp() {
        String[] parts = setup.split(":");
        Qwen3MoeConfig config = BenchConfigs.byName(parts[0]);
        String[] bt = parts[1].split("x");
        batch = Integer.parseInt(bt[0]);
        seqLen = Integer.parseInt(bt[1]);
        model = new Qwen3MoeModel(config, new CpuBackend());
        model.initRandom(1234, 0.02);
        params = model.parameters();
        long count = 0;
        states = new AdamW.State[params.size()];
        for (int i = 0; i < states.length; i++) {
            states[i] = new AdamW.State(model.backend(), params.get(i).shape());
            count += params.get(i).numel();
        }
        System.out.println("# " + setup + ": " + count + " parameters");
        opt = new AdamW(AdamW.Hyper.defaults());
        SplittableRandom r = new SplittableRandom(5);
        ids = new int[batch * seqLen];
        targets = new int[batch * seqLen];
        for (int i = 0; i < ids.length; i++) {
            ids[i] = r.nextInt(config.vocabSize());
        }
        for (int s = 0; s < batch; s++) {
            for (int p = 0; p < seqLen; p++) {
                targets[s * seqLen + p] = p + 1 < seqLen ? ids[s * seqLen + p + 1] : -100;
            }
        }
        predicted = batch * (seqLen - 1);
    }

    @Benchmark
    public double trainStep(Tokens t) {
        Qwen3MoeModel.Pass pass = model.forward(ids, targets, batch, seqLen, predicted,
                model.config().routerAuxLossCoef(), StatsReducer.LOCAL);
        model.backward(pass);
        step++;
        for (int i = 0; i < states.length; i++) {
            Parameter p = params.get(i);
            opt.step(model.backend(), p.value(), p.grad(), states[i], 3e-4, step);
            Arrays.fill(p.grad().floats(), 0f);
        }
        t.tokens += (long) batch * seqLen;
        return pass.lmLossSum();
    }
}

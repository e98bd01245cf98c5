package dev.sparkmoe.parallel.loss;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.Bf16Gemms;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.MemoryTracker;
import dev.sparkmoe.core.model.LmHeadLoss;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import dev.sparkmoe.parallel.fsdp.ShardLayout;
import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The vocabulary-parallel loss against the local fused loss of one rank ({@link LmHeadLoss#LOCAL} on the whole head):
 * on every rank the loss of its rows, its rows' input gradient and logits, and its rows of the head gradient summed
 * over every rank's tokens, for vocabularies that do not divide by the group (one with an empty last shard), ranks
 * with different numbers of tokens (none at all, or none with a target), chunks of other sizes than the rule,
 * logits large enough that exp overflows without the shift by the row's maximum, and more gathered rows than words
 * (the gathered path).
 */
class VocabParallelCrossEntropyTest {
    static final int H = 8;

    static Stream<Arguments> cases() {
        return Stream.of(
                Arguments.of("V 40 over 3 (14, 14, 12); 5, 0 and 3 rows, the last without targets", 40, new int[] {5,
                        0, 3}, 0, 1.0),
                Arguments.of("V 9 over 4 (3, 3, 3, 0: an empty shard)", 9, new int[] {2, 2, 1, 2}, 0, 1.0),
                Arguments.of("V 10 over 3, 3 x 5 gathered rows > V: the gathered path", 10, new int[] {5, 0, 3}, 0,
                        1.0),
                Arguments.of("V 37 over 2, 11 and 6 rows, chunks of 3 rows", 37, new int[] {11, 6}, 3, 1.0),
                Arguments.of("V 37 over 3, logits near 100, chunks of 5 rows", 37, new int[] {7, 7, 6}, 5, 30.0),
                Arguments.of("V 64 over 5, chunks of one row", 64, new int[] {3, 1, 2, 3, 2}, 1, 2.0));
    }

    /** What one rank produced, as host arrays. */
    record Out(double loss, float[] dHidden, float[] dWeight, float[] logits) {
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void equalsTheLocalLossOfOneRank(String name, int v, int[] counts, int rows, double magnitude) {
        int world = counts.length;
        SplittableRandom r = new SplittableRandom(v * 31L + world);
        float[] weight = random(r, v * H, 0.5);
        float[][] hidden = new float[world][];
        int[][] targets = new int[world][];
        for (int q = 0; q < world; q++) {
            hidden[q] = random(r, counts[q] * H, magnitude);
            targets[q] = new int[counts[q]];
            for (int i = 0; i < counts[q]; i++) {
                targets[q][i] = i % 4 == 1 || q == 2 ? -100 : r.nextInt(v); // rank 2: rows without targets
            }
        }
        float scale = 1f / 7;
        Backend cpu = new CpuBackend();
        // the reference: one rank, the whole head, each rank's rows on their own; the head gradient summed
        Out[] ref = new Out[world];
        double[] dW = new double[v * H];
        for (int q = 0; q < world; q++) {
            LmHeadLoss.Result res = LmHeadLoss.LOCAL.run(cpu, Tensor.of(hidden[q].clone(), counts[q], H),
                    Tensor.ofInts(targets[q].clone(), counts[q]), counts[q], Tensor.of(weight.clone(), v, H), scale,
                    true, true, 0);
            ref[q] = new Out(res.lossSum(), res.dHidden().floats(), null, res.logits().floats());
            float[] g = res.dWeight().floats();
            for (int i = 0; i < g.length; i++) {
                dW[i] += g[i];
            }
        }
        ShardLayout layout = new ShardLayout(new int[] {v, H}, 0, world);
        List<Out> outs = InJvmRanks.run(world, Duration.ofMinutes(1), comm -> {
            Backend be = new CpuBackend();
            int q = comm.rank();
            int[] rg = layout.range(q);
            Tensor shard = Tensor.of(Arrays.copyOfRange(weight, rg[0] * H, rg[1] * H), rg[1] - rg[0], H);
            LmHeadLoss loss = new VocabParallelCrossEntropy(comm, layout);
            LmHeadLoss.Result res = loss.run(be, Tensor.of(hidden[q].clone(), counts[q], H),
                    Tensor.ofInts(targets[q].clone(), counts[q]), counts[q], shard, scale, true, true, rows);
            double scored = loss.run(be, Tensor.of(hidden[q].clone(), counts[q], H),
                    Tensor.ofInts(targets[q].clone(), counts[q]), counts[q], shard, 0f, false, false, rows)
                    .lossSum();
            assertEquals(res.lossSum(), scored, 0.0, "the loss without gradients");
            assertEquals(List.of(counts[q], H), List.of(res.dHidden().dim(0), res.dHidden().dim(1)));
            assertEquals(List.of(rg[1] - rg[0], H), List.of(res.dWeight().dim(0), res.dWeight().dim(1)));
            return new Out(res.lossSum(), res.dHidden().floats(), res.dWeight().floats(), res.logits().floats());
        });
        for (int q = 0; q < world; q++) {
            Out out = outs.get(q);
            assertEquals(ref[q].loss, out.loss, 1e-6 * Math.max(1, Math.abs(ref[q].loss)), "loss of rank " + q);
            close("dHidden of rank " + q, ref[q].dHidden, out.dHidden);
            close("logits of rank " + q, ref[q].logits, out.logits);
            int[] rg = layout.range(q);
            float[] want = new float[(rg[1] - rg[0]) * H];
            for (int i = 0; i < want.length; i++) {
                want[i] = (float) dW[rg[0] * H + i];
            }
            close("LM head gradient rows " + Arrays.toString(rg) + " of rank " + q, want, out.dWeight);
        }
    }

    /**
     * On a backend whose GEMMs take bf16 operands ({@link Bf16Gemms}: the CPU backend with CUDA's bf16 GEMM dtype):
     * the GEMMs read bf16 copies of the head rows and the gathered rows and the chunk's gradient is written in bf16,
     * as the local fused loss does on the same backend: the same loss (1e-6) and gradients (bf16 rounding of the
     * chunk's gradient, which the two computations may round on either side: 1e-2), unlike the f32 loss; and every
     * copy is given back.
     */
    @Test
    void onBf16GemmOperandsEqualsTheLocalLossOnTheSameOperands() {
        int v = 40;
        int[] counts = {5, 4, 3};
        int world = counts.length;
        SplittableRandom r = new SplittableRandom(99);
        float[] weight = random(r, v * H, 0.5);
        float[][] hidden = new float[world][];
        int[][] targets = new int[world][];
        for (int q = 0; q < world; q++) {
            hidden[q] = random(r, counts[q] * H, 1.0);
            targets[q] = r.ints(counts[q], 0, v).toArray();
        }
        float scale = 1f / 12;
        Backend local16 = Bf16Gemms.over(new CpuBackend());
        Out[] ref = new Out[world];
        double[] f32Loss = new double[world];
        for (int q = 0; q < world; q++) {
            // logits retained: the local loss then keeps its chunk in f32, as the vocabulary-parallel loss computes
            // its logits (without, the local chunk is bf16: FusedLinearCrossEntropy)
            LmHeadLoss.Result res = LmHeadLoss.LOCAL.run(local16, Tensor.of(hidden[q].clone(), counts[q], H),
                    Tensor.ofInts(targets[q].clone(), counts[q]), counts[q], Tensor.of(weight.clone(), v, H), scale,
                    true, true, 0);
            ref[q] = new Out(res.lossSum(), res.dHidden().floats(), res.dWeight().floats(), null);
            f32Loss[q] = LmHeadLoss.LOCAL.run(new CpuBackend(), Tensor.of(hidden[q].clone(), counts[q], H),
                    Tensor.ofInts(targets[q].clone(), counts[q]), counts[q], Tensor.of(weight.clone(), v, H), scale,
                    false, false, 0).lossSum();
        }
        ShardLayout layout = new ShardLayout(new int[] {v, H}, 0, world);
        List<Out> outs = InJvmRanks.run(world, Duration.ofMinutes(1), comm -> {
            Backend be = MemoryTracker.wrap(Bf16Gemms.over(new CpuBackend()));
            MemoryTracker mem = MemoryTracker.of(be);
            int q = comm.rank();
            int[] rg = layout.range(q);
            Tensor shard = Tensor.of(Arrays.copyOfRange(weight, rg[0] * H, rg[1] * H), rg[1] - rg[0], H);
            LmHeadLoss.Result res = new VocabParallelCrossEntropy(comm, layout).run(be,
                    Tensor.of(hidden[q].clone(), counts[q], H), Tensor.ofInts(targets[q].clone(), counts[q]),
                    counts[q], shard, scale, true, false, 0);
            long results = MemoryTracker.deviceBytes(DType.F32, (long) (counts[q] + rg[1] - rg[0]) * H);
            assertEquals(results, mem.liveBytes(), "rank " + q + ": only the two gradients are left");
            return new Out(res.lossSum(), res.dHidden().floats(), res.dWeight().floats(), null);
        });
        float[] dW = new float[v * H];
        for (Out o : ref) {
            for (int i = 0; i < dW.length; i++) {
                dW[i] += o.dWeight[i];
            }
        }
        for (int q = 0; q < world; q++) {
            assertEquals(ref[q].loss, outs.get(q).loss, 1e-6 * ref[q].loss, "loss of rank " + q);
            assertTrue(Math.abs(f32Loss[q] - outs.get(q).loss) > 0, "rank " + q + ": the GEMMs read bf16 copies");
            closeTo("dHidden of rank " + q, ref[q].dHidden, outs.get(q).dHidden, 1e-2);
            int[] rg = layout.range(q);
            closeTo("LM head gradient rows of rank " + q, Arrays.copyOfRange(dW, rg[0] * H, rg[1] * H),
                    outs.get(q).dWeight, 1e-2);
        }
    }

    /**
     * The gathered path with the head as a bf16 compute copy (FsdpParam at bf16, world 1 per group): the rows travel
     * in f32 (a device communicator gathers only between equal dtypes, as this one checks), and the loss and
     * gradients are those of an f32 head holding the same values.
     */
    @Test
    void theGatheredPathGathersABf16HeadInF32() {
        int v = 6;
        int[] counts = {5, 4, 3}; // 12 gathered rows > 6 words: the gathered path
        int world = counts.length;
        SplittableRandom r = new SplittableRandom(5);
        float[] weight = random(r, v * H, 0.5);
        for (int i = 0; i < weight.length; i++) {
            weight[i] = DType.roundToBf16(weight[i]);
        }
        float[][] hidden = new float[world][];
        int[][] targets = new int[world][];
        for (int q = 0; q < world; q++) {
            hidden[q] = random(r, counts[q] * H, 1.0);
            targets[q] = r.ints(counts[q], 0, v).toArray();
        }
        ShardLayout layout = new ShardLayout(new int[] {v, H}, 0, world);
        java.util.function.Function<Boolean, List<Out>> run = bf16Head -> InJvmRanks.run(world,
                Duration.ofMinutes(1), comm -> {
                    Communicator checked = new dev.sparkmoe.parallel.comm.ForwardingCommunicator(comm) {
                        @Override
                        public void allGather(Tensor send, int sOff, int len, Tensor recv, int rOff) {
                            if (send.dtype() != recv.dtype()) {
                                throw new IllegalArgumentException("allGather from " + send + " into " + recv);
                            }
                            super.allGather(send, sOff, len, recv, rOff);
                        }
                    };
                    Backend be = Bf16Gemms.over(new CpuBackend());
                    int q = comm.rank();
                    int[] rg = layout.range(q);
                    float[] rows = Arrays.copyOfRange(weight, rg[0] * H, rg[1] * H);
                    Tensor shard = bf16Head ? Tensor.ofFloating(DType.BF16, rows, rg[1] - rg[0], H)
                            : Tensor.of(rows, rg[1] - rg[0], H);
                    LmHeadLoss.Result res = new VocabParallelCrossEntropy(checked, layout).run(be,
                            Tensor.of(hidden[q].clone(), counts[q], H), Tensor.ofInts(targets[q].clone(), counts[q]),
                            counts[q], shard, 1f / 12, true, false, 0);
                    return new Out(res.lossSum(), res.dHidden().floats(), res.dWeight().floats(), null);
                });
        List<Out> f32 = run.apply(false);
        List<Out> bf16 = run.apply(true);
        for (int q = 0; q < world; q++) {
            assertEquals(f32.get(q).loss, bf16.get(q).loss, 0.0, "loss of rank " + q);
            assertArrayEquals(f32.get(q).dHidden, bf16.get(q).dHidden, "dHidden of rank " + q);
            assertArrayEquals(f32.get(q).dWeight, bf16.get(q).dWeight, "head gradient rows of rank " + q);
        }
    }

    @Test
    void aTargetOutsideTheVocabularyFailsOnEveryRank() {
        ShardLayout layout = new ShardLayout(new int[] {10, H}, 0, 2);
        RuntimeException e = assertThrows(RuntimeException.class, () -> InJvmRanks.run(2, Duration.ofSeconds(30),
                comm -> {
                    int[] rg = layout.range(comm.rank());
                    int[] t = comm.rank() == 1 ? new int[] {3, 10} : new int[] {1, 2};
                    return new VocabParallelCrossEntropy(comm, layout).run(new CpuBackend(),
                            Tensor.of(new float[2 * H], 2, H), Tensor.ofInts(t, 2), 2,
                            Tensor.of(new float[(rg[1] - rg[0]) * H], rg[1] - rg[0], H), 1f, true, false, 0);
                }));
        String all = e.toString() + (e.getCause() != null ? e.getCause().toString() : "");
        assertTrue(all.contains("target id 10 at row 1 of rank 1 is outside the vocabulary [0, 10)"), all);
    }

    @Test
    void twoColumnsCarryTheOtherRanksShareToTheSquareOfFloatRounding() {
        for (double x : new double[] {0.0, 1e-3, 3.7, 17.25, -42.1, 88.0, 1234.567}) {
            float[] b1 = new float[1];
            float[] b2 = new float[1];
            VocabParallelCrossEntropy.splitInTwoColumns(x, b1, b2, 0);
            assertTrue(b1[0] <= x, "b1 " + b1[0] + " above " + x);
            double sum = Math.exp(b1[0] - x) + Math.exp(b2[0] - x);
            double ulp = Math.ulp((float) x);
            assertEquals(1.0, sum, ulp * ulp + 1e-14, "exp(b1) + exp(b2) against exp(" + x + ")"); // b2's rounding
        }
        float[] b1 = new float[1];
        float[] b2 = new float[1];
        VocabParallelCrossEntropy.splitInTwoColumns(Double.NEGATIVE_INFINITY, b1, b2, 0);
        assertEquals(VocabParallelCrossEntropy.NO_MASS, b1[0]);
        assertEquals(VocabParallelCrossEntropy.NO_MASS, b2[0]);
    }

    private static float[] random(SplittableRandom r, int n, double scale) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) (r.nextGaussian() * scale);
        }
        return x;
    }

    /** Equal within 2e-6 of the largest reference value (f32 sums in another order). */
    private static void close(String what, float[] want, float[] got) {
        closeTo(what, want, got, 2e-6);
    }

    /** Equal within {@code tol} of the largest reference value. */
    private static void closeTo(String what, float[] want, float[] got, double tol) {
        assertEquals(want.length, got.length, what + ": length");
        double max = 0;
        double diff = 0;
        for (int i = 0; i < want.length; i++) {
            max = Math.max(max, Math.abs(want[i]));
            diff = Math.max(diff, Math.abs(want[i] - got[i]));
        }
        assertTrue(diff <= tol * Math.max(max, 1e-30), what + ": max |diff| " + diff + " against max |value| " + max);
    }
}

package dev.sparkmoe.core.bench;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import org.bytedeco.javacpp.FloatPointer;
import org.bytedeco.openblas.global.openblas_nolapack;
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
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * sgemm at the model's shapes: CpuBackend.gemm (heap float[] wrapped in FloatBuffers, which JavaCPP hands to
 * OpenBLAS through JNI array access) against cblas_sgemm called directly on off-heap FloatPointer buffers.
 * Shape strings are {@code name:AB:mxnxk} with A/B = N or T (row-major, as Backend.gemm); the "flop" counter is
 * 2mnk per call, reported per second (GFLOP/s = flop/s / 1e9).
 *
 * <p>fix.* shapes: the tiny fixture at 32 tokens (2 x 16): hidden 64, q 4x16, kv 2x16, 8 experts top-2 (8 rows per
 * expert on average), moe inter 32, vocab 512. m20.* shapes: the 18.4M config at 1024 tokens (4 x 256): hidden
 * 256, kv 4x32, 8 experts top-2 (256 rows per expert on average), moe inter 256, vocab 8192.
 */
@BenchmarkMode(Mode.Throughput)
@OutputTimeUnit(TimeUnit.SECONDS)
@Warmup(iterations = 2, time = 1)
@Measurement(iterations = 3, time = 2)
@Fork(1)
@State(Scope.Thread)
public class GemmBench {

    @Param({
        "fix.q_proj:NT:32x64x64",
        "fix.expert_gate:NT:8x32x64",
        "fix.lm_head:NT:32x512x64",
        "fix.lm_head_dW:TN:512x64x32",
        "m20.q_proj:NT:1024x256x256",
        "m20.k_proj:NT:1024x128x256",
        "m20.expert_gate:NT:256x256x256",
        "m20.expert_dW:TN:256x256x256",
        "m20.lm_head:NT:1024x8192x256",
        "m20.lm_head_dX:NN:1024x256x8192",
        "m20.lm_head_dW:TN:8192x256x1024",
    })
    public String shape;

    boolean transA;
    boolean transB;
    int m;
    int n;
    int k;
    int lda;
    int ldb;
    long flopPerCall;

    CpuBackend backend;
    Tensor a;
    Tensor b;
    Tensor c;
    FloatPointer pa;
    FloatPointer pb;
    FloatPointer pc;

    /** Floating-point operations, normalised to a rate by JMH. */
    @AuxCounters(AuxCounters.Type.OPERATIONS)
    @State(Scope.Thread)
    public static class Flops {
        public long flop;

        @Setup(Level.Iteration)
        public void reset() {
            flop = 0;
        }
    }

    @Setup(Level.Trial)
    public void setUp() {
        String[] parts = shape.split(":");
        transA = parts[1].charAt(0) == 'T';
        transB = parts[1].charAt(1) == 'T';
        String[] dims = parts[2].split("x"); // no commas: JMH's -p splits values on them
        m = Integer.parseInt(dims[0]);
        n = Integer.parseInt(dims[1]);
        k = Integer.parseInt(dims[2]);
        lda = transA ? m : k;
        ldb = transB ? k : n;
        flopPerCall = 2L * m * n * k;
        backend = new CpuBackend();
        SplittableRandom r = new SplittableRandom(1);
        a = Tensor.of(random(r, m * k), m * k);
        b = Tensor.of(random(r, k * n), k * n);
        c = Tensor.of(random(r, m * n), m * n);
        pa = new FloatPointer(a.floats());
        pb = new FloatPointer(b.floats());
        pc = new FloatPointer(c.floats());
    }

    private static float[] random(SplittableRandom r, int len) {
        float[] f = new float[len];
        for (int i = 0; i < len; i++) {
            f[i] = (float) (r.nextDouble() * 2 - 1);
        }
        return f;
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        pa.close();
        pb.close();
        pc.close();
    }

    @Benchmark
    public Tensor cpuBackend(Flops f) {
        backend.gemm(transA, transB, m, n, k, 1f, a, 0, lda, b, 0, ldb, 0f, c, 0, n);
        f.flop += flopPerCall;
        return c;
    }

    @Benchmark
    public FloatPointer directOpenBlas(Flops f) {
        openblas_nolapack.cblas_sgemm(openblas_nolapack.CblasRowMajor,
                transA ? openblas_nolapack.CblasTrans : openblas_nolapack.CblasNoTrans,
                transB ? openblas_nolapack.CblasTrans : openblas_nolapack.CblasNoTrans,
                m, n, k, 1f, pa, lda, pb, ldb, 0f, pc, n);
        f.flop += flopPerCall;
        return pc;
    }
}

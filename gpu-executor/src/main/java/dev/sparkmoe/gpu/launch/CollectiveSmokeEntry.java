package dev.sparkmoe.gpu.launch;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.gpu.nccl.DeviceAllocation;
import dev.sparkmoe.gpu.nccl.NcclCommunicator;
import dev.sparkmoe.gpu.nccl.NcclWork;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.CommunicatorConformance;
import dev.sparkmoe.parallel.tools.Cli;
import picocli.CommandLine;

/**
 * The launcher's built-in entry: checks the job's communicators and measures NCCL.
 * <ol>
 *   <li>{@link CommunicatorConformance#runAll(Communicator)} on the host (TCP) world;</li>
 *   <li>with an NCCL world: the same suite on it (host arrays, staged through device buffers), then the device-tensor
 *       forms (all-reduce, all-gather, reduce-scatter, uneven all-to-all, broadcast, an async all-reduce, a split)
 *       on device memory, checked exactly;</li>
 *   <li>with an NCCL world: all-reduce bus bandwidth as nccl-tests defines it: {@code algbw = bytes / time},
 *       {@code busbw = algbw * 2 (n - 1) / n}, time = the slowest rank's mean over the timed iterations.</li>
 * </ol>
 * Arguments: {@code [--skip-busbw] [--busbw-bytes N (default 1 GiB)] [--iters N (20)] [--warmup N (5)]}. Prints
 * {@code SMOKE OK} and returns 0 when everything passed; a failed check throws (the rank exits 1).
 */
public final class CollectiveSmokeEntry implements RankEntry {

    /** The entry's arguments (after {@code --} on the launcher's command line). */
    @CommandLine.Command(name = "launch -- (NCCL smoke test)", mixinStandardHelpOptions = true,
            description = "Communicator conformance on the host and NCCL worlds, then NCCL all-reduce bus bandwidth.")
    static final class Args {
        @CommandLine.Option(names = "--skip-busbw", description = "skip the bus-bandwidth measurement")
        boolean skipBusbw;

        @CommandLine.Option(names = "--busbw-bytes", paramLabel = "N", defaultValue = "1073741824",
                description = "all-reduce size in bytes (default ${DEFAULT-VALUE}, 1 GiB)")
        long bytes;

        @CommandLine.Option(names = "--iters", paramLabel = "N", defaultValue = "20",
                description = "timed iterations (default ${DEFAULT-VALUE})")
        int iters;

        @CommandLine.Option(names = "--warmup", paramLabel = "N", defaultValue = "5",
                description = "untimed iterations first (default ${DEFAULT-VALUE})")
        int warmup;

        Args check() {
            if (bytes < 4 || iters < 1 || warmup < 0) {
                throw new Cli.UsageException("--busbw-bytes must be >= 4, --iters >= 1 and --warmup >= 0; got "
                        + bytes + ", " + iters + ", " + warmup);
            }
            return this;
        }
    }

    @Override
    public int run(RankContext ctx, String[] args) {
        Args a = Cli.parse(new Args(), args).check();
        boolean busbw = !a.skipBusbw;
        long bytes = a.bytes;
        int iters = a.iters;
        int warmup = a.warmup;
        long t0 = System.nanoTime();
        CommunicatorConformance.runAll(ctx.host());
        say(ctx, "host conformance passed on '" + ctx.host().name() + "' (" + ctx.worldSize() + " ranks, tcp) in "
                + ms(t0) + " ms");
        if (ctx.nccl().isPresent()) {
            NcclCommunicator nccl = ctx.nccl().get();
            t0 = System.nanoTime();
            CommunicatorConformance.runAll(nccl);
            say(ctx, "NCCL conformance passed on '" + nccl.name() + "' (device " + nccl.device() + ") in " + ms(t0)
                    + " ms");
            t0 = System.nanoTime();
            deviceChecks(nccl);
            say(ctx, "NCCL device-tensor collectives passed in " + ms(t0) + " ms");
            if (busbw) {
                busBandwidth(ctx, nccl, bytes, warmup, iters);
            }
        }
        ctx.host().barrier();
        say(ctx, "SMOKE OK");
        return 0;
    }

    /**
     * FSDP's bf16 param gather ({@link NcclCommunicator#allGatherStart(java.util.List, DType)}): parts of odd sizes
     * at odd offsets, values that bf16 cannot hold. Every rank must receive exactly each sender's values rounded to
     * bf16 (nearest even), its own included, the send buffers unchanged, and the wire buffer back in the allocator.
     */
    static void bf16WireCheck(NcclCommunicator c) {
        int n = c.size();
        int me = c.rank();
        long computeStream = c.computeStream();
        try (dev.sparkmoe.gpu.cuda.CudaBackend be = new dev.sparkmoe.gpu.cuda.CudaBackend(c.device())) {
            c.attach(be);
            int[] lens = {5, 1, 300, 4099};
            Tensor[] send = new Tensor[lens.length];
            Tensor[] recv = new Tensor[lens.length];
            float[][] mine = new float[lens.length][];
            java.util.List<Communicator.Part> parts = new java.util.ArrayList<>();
            for (int i = 0; i < lens.length; i++) {
                int l = lens[i];
                mine[i] = new float[l + 1];
                for (int k = 0; k < l; k++) {
                    mine[i][k + 1] = value(me, i, k);
                }
                send[i] = be.upload(Tensor.of(mine[i], l + 1));
                recv[i] = be.zeros(DType.F32, n * l + 3);
                parts.add(new Communicator.Part(send[i], 1, recv[i], 3, l));
            }
            long inUse = be.memoryStats().bytesInUse();
            c.allGatherStart(parts, DType.BF16).complete();
            for (int i = 0; i < lens.length; i++) {
                int l = lens[i];
                float[] got = be.download(recv[i]).floats();
                float[] want = new float[n * l + 3];
                for (int q = 0; q < n; q++) {
                    for (int k = 0; k < l; k++) {
                        want[3 + q * l + k] = DType.roundToBf16(value(q, i, k));
                    }
                }
                expect("device allGatherStart(group, bf16 wire) part " + i, want, got);
                expect("bf16-wire send buffer " + i + " unchanged", mine[i], be.download(send[i]).floats());
            }
            if (be.memoryStats().bytesInUse() != inUse) {
                throw new AssertionError("bf16-wire all-gather left " + (be.memoryStats().bytesInUse() - inUse)
                        + " bytes allocated after complete()");
            }
        } finally {
            c.detach();
            c.setComputeStream(computeStream);
        }
    }

    /** Distinct per rank, part and element, and not a bf16 value. */
    private static float value(int rank, int part, int k) {
        return (rank * 1000 + part * 100 + k % 97) * 1.001f + 1f / 3;
    }

    private static void say(RankContext ctx, String msg) {
        System.out.println(ctx.tag() + ": " + msg);
        System.out.flush();
    }

    private static long ms(long t0) {
        return (System.nanoTime() - t0) / 1_000_000;
    }

    private static void expect(String what, float[] expected, float[] actual) {
        for (int k = 0; k < expected.length; k++) {
            if (Float.floatToRawIntBits(expected[k]) != Float.floatToRawIntBits(actual[k])) {
                throw new AssertionError(what + ": element " + k + " = " + actual[k] + ", expected " + expected[k]);
            }
        }
    }

    /** Device-tensor forms on exact small-integer data. */
    public static void deviceChecks(NcclCommunicator c) {
        int n = c.size();
        int me = c.rank();
        int dev = c.device();
        // all-reduce
        int len = 1000;
        try (DeviceAllocation b = DeviceAllocation.allocate(dev, 4L * len)) {
            float[] h = new float[len];
            float[] want = new float[len];
            for (int k = 0; k < len; k++) {
                h[k] = (me + 1) * (k % 17);
                want[k] = (n * (n + 1) / 2f) * (k % 17);
            }
            b.upload(h, 0, len, 0);
            c.allReduceSum(Tensor.onDevice(DType.F32, b, len), 0, len);
            float[] got = new float[len];
            b.download(got, 0, len, 0);
            expect("device allReduceSum", want, got);
            // the same through the async form, ordered on the compute stream
            b.upload(h, 0, len, 0);
            try (NcclWork w = c.allReduceSumAsync(Tensor.onDevice(DType.F32, b, len), 0, len)) {
                w.await();
            }
            b.download(got, 0, len, 0);
            expect("device allReduceSumAsync", want, got);
        }
        // all-gather into the middle of a larger tensor
        int g = 5;
        try (DeviceAllocation s = DeviceAllocation.allocate(dev, 4L * g); DeviceAllocation r = DeviceAllocation.allocate(dev, 4L * (n * g + 3))) {
            float[] h = new float[g];
            for (int k = 0; k < g; k++) {
                h[k] = me * 100 + k;
            }
            s.upload(h, 0, g, 0);
            c.allGather(Tensor.onDevice(DType.F32, s, g), 0, g, Tensor.onDevice(DType.F32, r, n * g + 3), 3);
            float[] got = new float[n * g];
            r.download(got, 0, n * g, 3);
            float[] want = new float[n * g];
            for (int q = 0; q < n; q++) {
                for (int k = 0; k < g; k++) {
                    want[q * g + k] = q * 100 + k;
                }
            }
            expect("device allGather", want, got);
        }
        // reduce-scatter
        int rs = 4;
        try (DeviceAllocation s = DeviceAllocation.allocate(dev, 4L * n * rs); DeviceAllocation r = DeviceAllocation.allocate(dev, 4L * rs)) {
            float[] h = new float[n * rs];
            for (int k = 0; k < n * rs; k++) {
                h[k] = (me + 1) * k;
            }
            s.upload(h, 0, n * rs, 0);
            c.reduceScatterSum(Tensor.onDevice(DType.F32, s, n * rs), 0, Tensor.onDevice(DType.F32, r, rs), 0, rs);
            float[] got = new float[rs];
            r.download(got, 0, rs, 0);
            float[] want = new float[rs];
            for (int k = 0; k < rs; k++) {
                want[k] = (n * (n + 1) / 2f) * (me * rs + k);
            }
            expect("device reduceScatterSum", want, got);
        }
        // grouped and started (FSDP's per-unit form): three all-gathers, then three reduce-scatters, of different
        // sizes at different offsets, each group one NCCL launch completed by one Pending
        int[] lens = {5, 1, 300};
        DeviceAllocation[] gs = new DeviceAllocation[3];
        DeviceAllocation[] gr = new DeviceAllocation[3];
        try {
            java.util.List<Communicator.Part> gather = new java.util.ArrayList<>();
            java.util.List<Communicator.Part> reduce = new java.util.ArrayList<>();
            for (int i = 0; i < 3; i++) {
                int l = lens[i];
                gs[i] = DeviceAllocation.allocate(dev, 4L * (n * l + 2));
                gr[i] = DeviceAllocation.allocate(dev, 4L * (n * l + 2));
                float[] h = new float[l];
                for (int k = 0; k < l; k++) {
                    h[k] = me * 1000 + i * 100 + k % 100;
                }
                gs[i].upload(h, 0, l, 1);
                gather.add(new Communicator.Part(Tensor.onDevice(DType.F32, gs[i], n * l + 2), 1,
                        Tensor.onDevice(DType.F32, gr[i], n * l + 2), 2, l));
            }
            c.allGatherStart(gather).complete();
            for (int i = 0; i < 3; i++) {
                int l = lens[i];
                float[] got = new float[n * l];
                gr[i].download(got, 0, n * l, 2);
                float[] want = new float[n * l];
                for (int q = 0; q < n; q++) {
                    for (int k = 0; k < l; k++) {
                        want[q * l + k] = q * 1000 + i * 100 + k % 100;
                    }
                }
                expect("device allGatherStart(group) part " + i, want, got);
                // reduce-scatter the gathered buffers back (the same on every rank): n times each rank's chunk
                reduce.add(new Communicator.Part(Tensor.onDevice(DType.F32, gr[i], n * l + 2), 2,
                        Tensor.onDevice(DType.F32, gs[i], n * l + 2), 0, l));
            }
            c.reduceScatterSumStart(reduce).complete();
            for (int i = 0; i < 3; i++) {
                int l = lens[i];
                float[] got = new float[l];
                gs[i].download(got, 0, l, 0);
                float[] want = new float[l];
                for (int k = 0; k < l; k++) {
                    want[k] = n * (me * 1000 + i * 100 + k % 100);
                }
                expect("device reduceScatterSumStart(group) part " + i, want, got);
            }
        } finally {
            for (int i = 0; i < 3; i++) {
                if (gs[i] != null) {
                    gs[i].close();
                }
                if (gr[i] != null) {
                    gr[i].close();
                }
            }
        }
        bf16WireCheck(c);
        // uneven all-to-all: rank q sends (q + p) % 3 + 1 elements to p
        int[] sc = new int[n];
        int[] rc = new int[n];
        int st = 0;
        int rt = 0;
        for (int p = 0; p < n; p++) {
            sc[p] = (me + p) % 3 + 1;
            rc[p] = (p + me) % 3 + 1;
            st += sc[p];
            rt += rc[p];
        }
        try (DeviceAllocation s = DeviceAllocation.allocate(dev, 4L * st); DeviceAllocation r = DeviceAllocation.allocate(dev, 4L * rt)) {
            float[] h = new float[st];
            int o = 0;
            for (int p = 0; p < n; p++) {
                for (int i = 0; i < sc[p]; i++) {
                    h[o++] = me * 1000 + p * 10 + i;
                }
            }
            s.upload(h, 0, st, 0);
            c.allToAll(Tensor.onDevice(DType.F32, s, st), sc, Tensor.onDevice(DType.F32, r, rt), rc);
            float[] got = new float[rt];
            r.download(got, 0, rt, 0);
            float[] want = new float[rt];
            o = 0;
            for (int p = 0; p < n; p++) {
                for (int i = 0; i < rc[p]; i++) {
                    want[o++] = p * 1000 + me * 10 + i;
                }
            }
            expect("device allToAll (uneven)", want, got);
        }
        // broadcast from the last rank
        try (DeviceAllocation b = DeviceAllocation.allocate(dev, 4L * 7)) {
            float[] h = new float[7];
            float[] want = new float[7];
            for (int k = 0; k < 7; k++) {
                h[k] = me == n - 1 ? 42 + k : -1;
                want[k] = 42 + k;
            }
            b.upload(h, 0, 7, 0);
            c.broadcast(Tensor.onDevice(DType.F32, b, 7), 0, 7, n - 1);
            float[] got = new float[7];
            b.download(got, 0, 7, 0);
            expect("device broadcast", want, got);
        }
        // a split (one communicator per mesh dimension): parity groups
        try (Communicator sub = c.split(me % 2, me, "parity"); DeviceAllocation b = DeviceAllocation.allocate(dev, 4)) {
            b.upload(new float[] {me}, 0, 1, 0);
            sub.allReduceSum(Tensor.onDevice(DType.F32, b, 1), 0, 1);
            float[] got = new float[1];
            b.download(got, 0, 1, 0);
            float want = 0;
            for (int q = me % 2; q < n; q += 2) {
                want += q;
            }
            expect("device allReduceSum on split 'parity'", new float[] {want}, got);
        }
    }

    /** nccl-tests' all_reduce_perf busbw for one size, float32 sum, in place. */
    public static void busBandwidth(RankContext ctx, NcclCommunicator c, long bytes, int warmup, int iters) {
        long count = bytes / 4;
        try (DeviceAllocation b = DeviceAllocation.allocate(c.device(), 4 * count)) {
            b.fill(0);
            for (int i = 0; i < warmup; i++) {
                c.allReduceSumAsync(b, count, DType.F32).await();
            }
            c.barrier();
            long t0 = System.nanoTime();
            NcclWork last = null;
            for (int i = 0; i < iters; i++) {
                if (last != null) {
                    last.close();
                }
                last = c.allReduceSumAsync(b, count, DType.F32);
            }
            if (last != null) {
                last.await();
            }
            float[] sec = {(float) ((System.nanoTime() - t0) / 1e9 / Math.max(1, iters))};
            ctx.host().allReduceMax(sec, 0, 1);
            int n = c.size();
            double algbw = 4.0 * count / sec[0] / 1e9;
            double busbw = algbw * 2.0 * (n - 1) / n;
            if (c.rank() == 0) {
                say(ctx, String.format("NCCL all-reduce busbw: %d bytes float32 sum in place, %d ranks, %d iterations"
                                + " after %d warm-up: time %.3f ms, algbw %.1f GB/s, busbw %.1f GB/s", 4 * count, n, iters,
                        warmup, sec[0] * 1e3, algbw, busbw));
            }
        }
    }
}

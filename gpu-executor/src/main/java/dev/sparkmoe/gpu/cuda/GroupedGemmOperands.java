package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.cuda.cudart.CUfunc_st;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.BytePointer;
import org.bytedeco.javacpp.Pointer;
import org.bytedeco.javacpp.PointerPointer;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;

/**
 * The bf16 operands of the grouped GEMM kernel ({@link GroupedGemm}): a BF16 tensor (a weight's compute copy,
 * {@link CudaBackend#emptyGemmOperand}'s activations) or an operand held as a bf16 image (the FSDP bf16 wire's gathered
 * weights) is read in place where the kernel can ({@link #readableInPlace}); any other is rounded into a
 * stream-ordered scratch copy by one {@code grouped_cast_bf16} launch (groups packed, rows padded to 16 bytes with
 * zeros, so any offset and stride works).
 *
 * <p>The copies of the last grouped GEMM's operands are kept for the very next backend call only. Where that call is
 * a grouped GEMM that would convert the same f32 blocks (same source addresses, block shapes and stride), it reads
 * the kept copy instead of converting again: {@code Experts} orders its grouped GEMMs so that neighbours share an
 * operand (the routed rows of the gate and up projections, the output gradient of the down projection's input and
 * weight gradients, ...). Any other backend call in between (counted by {@link #onBackendCall}), a scope closing or
 * the backend closing drops them, released stream-ordered. Nothing but a backend call can write a tensor's memory in
 * between (collectives write only buffers the caller made or chose with backend calls), so a kept copy is still
 * exact when it is reused. Called under the backend's lock.
 */
final class GroupedGemmOperands {
    /** grouped_cast_bf16's GCParams (see grouped_gemm_bf16.cu): srcLd, dstLd, count, pad, src[64], dst[64],
     *  rows[64], cols[64]. */
    private static final long GC_OFF_SRC = 16;
    private static final long GC_OFF_DST = GC_OFF_SRC + 8L * 64;
    private static final long GC_OFF_ROWS = GC_OFF_DST + 8L * 64;
    private static final long GC_OFF_COLS = GC_OFF_ROWS + 4L * 64;
    private static final long GC_PARAMS_BYTES = GC_OFF_COLS + 4L * 64; // 1552
    /** Groups per launch; at[MAX_GROUPS] carries an operand's row stride. */
    static final int MAX_GROUPS = GroupedGemm.MAX_GROUPS;

    private final CudaDevice device;
    private final CudaMemory memory;
    private final KernelLauncher launcher;
    private final Bf16Images images;
    /** The cast's GC_UNROLL (chunks a thread converts; {@link GroupedGemm.Tiles}). */
    private final int gcUnroll;
    private final BytePointer gcParams = new BytePointer(GC_PARAMS_BYTES);
    private final PointerPointer<Pointer> gcArgPtrs = new PointerPointer<>(1);
    private final List<HeldCast> heldCasts = new ArrayList<>(2);
    private long heldAt; // the backend call that made or last used the kept copies
    private long ops; // backend calls so far
    private long operandCasts; // grouped_cast_bf16 launches so far
    private long bf16InPlace; // BF16 tensors read in place so far

    /** An operand copy and what it converted ({@link #castKey}). */
    record HeldCast(DeviceBuffer copy, long[] key) {
    }

    /** Where the bf16 kernel reads one operand: its base address and row stride, and the cast copy if one was made. */
    record Bf16Operand(long base, int ld, HeldCast cast) {
    }

    GroupedGemmOperands(GroupedGemm.Tiles tiles, CudaDevice device, CudaMemory memory, KernelLauncher launcher,
                        Bf16Images images) {
        this.gcUnroll = tiles.castUnroll();
        this.device = device;
        this.memory = memory;
        this.launcher = launcher;
        this.images = images;
        gcArgPtrs.put(0, gcParams);
    }

    /** Counts a backend call; the kept copies go when a call came between their maker and this one. */
    void onBackendCall() {
        ops++;
        if (!heldCasts.isEmpty() && heldAt < ops - 1) {
            dropHeldCasts(); // a call came between: the copies may be stale
        }
    }

    /** The kept copies, handed to the grouped GEMM that may reuse them (no longer kept). */
    List<HeldCast> takeHeld() {
        List<HeldCast> offered = new ArrayList<>(heldCasts);
        heldCasts.clear();
        return offered;
    }

    /** Keeps the copies a launch read for the next call. */
    void hold(HeldCast aCast, HeldCast bCast) {
        for (HeldCast h : new HeldCast[] {aCast, bCast}) {
            if (h != null && !heldCasts.contains(h)) {
                heldCasts.add(h);
            }
        }
        heldAt = ops;
    }

    /** Releases (stream-ordered) those of a launch's copies that are not kept. */
    void releaseUnheld(DeviceBuffer a16, DeviceBuffer b16) {
        // stream-ordered: a later user of these blocks queues behind the kernel that reads them
        for (DeviceBuffer d : new DeviceBuffer[] {a16, b16 == a16 ? null : b16}) {
            if (d != null && !d.released && heldCasts.stream().noneMatch(h -> h.copy() == d)) {
                memory.release(d);
            }
        }
    }

    /** Releases the copies kept by the previous call that this one neither used nor kept. */
    void releaseUnused(List<HeldCast> offered) {
        for (HeldCast h : offered) { // kept by the previous call and not used by this one
            if (!h.copy().released && heldCasts.stream().noneMatch(x -> x.copy() == h.copy())) {
                memory.release(h.copy());
            }
        }
    }

    /**
     * One operand of a {@link CudaBackend.GroupedMode#KERNEL} launch: a BF16 tensor (a weight's compute copy,
     * {@link CudaBackend#emptyGemmOperand}'s activations; the caller widened any it cannot read in place) and an
     * operand held as a bf16 image (the FSDP bf16 wire's gathered weights, {@link #imageOperand}) are read in place;
     * any other is cast ({@link #castGroupedOperand}, which widens images first). Fills at[] as all three do.
     */
    Bf16Operand bf16Operand(Tensor t, String what, int[] off, int ld, int[] rows, int[] cols, int[] k, int[] active,
                            int start, int here, long[] at, List<HeldCast> offered) {
        if (t.dtype() == DType.BF16) { // a compute copy or an activation: read in place (see readableInPlace)
            long base = memory.addrOf(t, DType.BF16, what, 0, t.numel());
            for (int q = 0; q < here; q++) {
                int g = active[start + q];
                at[q] = k[g] > 0 ? off[g] : 0;
            }
            at[MAX_GROUPS] = ld;
            bf16InPlace++;
            return new Bf16Operand(base, ld, null);
        }
        Bf16Images.Image img = imageOperand(t, off, ld, rows, cols, k, active, start, here, at);
        if (img != null) {
            return new Bf16Operand(img.address(), ld, null);
        }
        HeldCast cast = castGroupedOperand(t, what, off, ld, rows, cols, k, active, start, here, at, offered);
        return new Bf16Operand(cast == null ? 0 : cast.copy().address(), (int) at[MAX_GROUPS], cast);
    }

    /**
     * The bf16 image of {@code t} that holds the [rows, cols] block (stride ld, at element off[g]) of every group
     * active[start .. start + here) that reads the operand (k > 0), when the bf16 kernel can read it in place: one
     * image holds them all, ld and every block's cols are multiples of 8 (16-byte rows, and no 16-byte chunk runs
     * past a row's end, where the kernel expects zeros) and every block starts 16-byte aligned. Fills at[q] with the
     * element offset of group active[start + q]'s block from the image's first value. Null otherwise (the caller
     * casts, which writes the images out first).
     */
    private Bf16Images.Image imageOperand(Tensor t, int[] off, int ld, int[] rows, int[] cols, int[] k, int[] active,
                                          int start, int here, long[] at) {
        if (!(t.deviceHandle() instanceof DeviceBuffer) || ld % 8 != 0) {
            return null;
        }
        DeviceBuffer b = (DeviceBuffer) t.deviceHandle();
        if (b.images == null || b.released || b.owner() != memory.owner()) {
            return null;
        }
        Bf16Images.Image found = null;
        for (int q = 0; q < here; q++) {
            int g = active[start + q];
            at[q] = 0;
            if (k[g] <= 0) {
                continue;
            }
            long from = off[g], n = (long) (rows[g] - 1) * ld + cols[g];
            if (found == null) { // the image of the first block; every other block must lie in it too
                for (Bf16Images.Image img : b.images) {
                    if (from >= img.element() && from + n <= img.element() + img.count()) {
                        found = img;
                        break;
                    }
                }
            }
            if (found == null || cols[g] % 8 != 0 || from < found.element()
                    || from + n > found.element() + found.count()) {
                return null;
            }
            at[q] = from - found.element();
            if ((found.address() + 2 * at[q]) % 16 != 0) {
                return null;
            }
        }
        if (found == null) {
            return null;
        }
        at[MAX_GROUPS] = ld;
        images.countOperandRead();
        return found;
    }

    /**
     * Whether the kernel can read the BF16 tensor {@code t} in place as an operand whose group g is the [rows[g],
     * cols[g]] block at element off[g] with stride ld, for every group that reads it (m, n, k > 0): the kernel reads
     * rows in 16-byte chunks and expects zeros past a row's end, so ld and every block's cols must be multiples of 8
     * and every block must start 16-byte aligned (the cast copies are laid out so; a compute copy of a weight whose
     * dims are multiples of 8 is too). Otherwise the caller widens it to f32 first, and it is cast as any f32 operand.
     */
    boolean readableInPlace(Tensor t, int[] off, int ld, int[] rows, int[] cols, int[] m, int[] n, int[] k) {
        if (t.dtype() != DType.BF16 || ld % 8 != 0) {
            return false;
        }
        long base = memory.addrOf(t, DType.BF16, "grouped GEMM operand", 0, t.numel());
        for (int g = 0; g < m.length; g++) {
            if (m[g] > 0 && n[g] > 0 && k[g] > 0 && (rows[g] <= 0 || cols[g] % 8 != 0 || (base + 2L * off[g]) % 16 != 0)) {
                return false;
            }
        }
        return true;
    }

    /** BF16 operands the kernel read in place so far (tests). */
    long bf16InPlace() {
        return bf16InPlace;
    }

    /** Releases the kept operand copies (stream-ordered). */
    void dropHeldCasts() {
        for (HeldCast h : heldCasts) {
            if (!h.copy().released) {
                memory.release(h.copy());
            }
        }
        heldCasts.clear();
    }

    /** Number of kept operand copies (tests). */
    int heldOperandCopies() {
        return heldCasts.size();
    }

    /** Operand blocks converted to bf16 so far (grouped_cast_bf16 launches; tests). */
    long operandCasts() {
        return operandCasts;
    }

    /** The stored [rows, cols] of every group's A and B: {aRows, aCols, bRows, bCols}. */
    static int[][] operandDims(boolean transA, boolean transB, int[] m, int[] n, int[] k) {
        int groups = m.length;
        int[][] d = new int[4][groups];
        for (int g = 0; g < groups; g++) {
            d[0][g] = transA ? k[g] : m[g];
            d[1][g] = transA ? m[g] : k[g];
            d[2][g] = transB ? n[g] : k[g];
            d[3][g] = transB ? k[g] : n[g];
        }
        return d;
    }

    /**
     * One {@code grouped_cast_bf16} launch rounding the [rows, cols] block of every group active[start .. start +
     * here) that reads its operands (k > 0) from f32 {@code t} (offset off[g], stride ld) into a new bf16 scratch
     * buffer, packed group after group in group order with row stride dstLd = the widest cols rounded up to 8 (the
     * padding columns written as zeros), so that every block and row is 16-byte aligned whatever off and ld are.
     * Fills at[q] with the element offset of group active[start + q]'s block in the scratch and at[64] with dstLd.
     * Returns null where no group reads the operand. Chunk counts stay below 2^31: rows * ld is an int span and
     * dstLd <= ld + 7.
     */
    private HeldCast castGroupedOperand(Tensor t, String what, int[] off, int ld, int[] rows, int[] cols, int[] k,
                                        int[] active, int start, int here, long[] at, List<HeldCast> offered) {
        // Blocks are packed in group order (not launch order), so that a neighbour with another launch order (a
        // weight gradient sorts its groups by k) finds the same copy: the key and the layout depend only on which
        // groups read the operand, where their blocks are and how large they are.
        int[] reading = new int[here];
        int count = 0;
        for (int q = 0; q < here; q++) {
            if (k[active[start + q]] > 0) {
                reading[count++] = active[start + q];
            }
        }
        reading = Arrays.copyOf(reading, count);
        Arrays.sort(reading);
        long[] key = castKey(t, what, off, ld, rows, cols, reading);
        HeldCast found = null;
        for (HeldCast h : offered) {
            if (Arrays.equals(h.key(), key)) {
                found = h;
                break;
            }
        }
        int dstLd = 0, entries = 0;
        long total = 0, maxChunks = 0;
        for (int g : reading) {
            dstLd = Math.max(dstLd, cols[g]);
        }
        dstLd = (dstLd + 7) / 8 * 8;
        java.util.Map<Integer, Long> blockAt = new HashMap<>();
        for (int g : reading) {
            blockAt.put(g, total);
            total += (long) rows[g] * dstLd;
            maxChunks = Math.max(maxChunks, (long) rows[g] * dstLd / 8);
        }
        for (int q = 0; q < here; q++) {
            at[q] = blockAt.getOrDefault(active[start + q], 0L);
        }
        at[MAX_GROUPS] = dstLd;
        if (total == 0) {
            return null;
        }
        if (found != null) {
            return found; // the same blocks, converted by the previous call: the same layout
        }
        DeviceBuffer d = memory.allocate(2 * total);
        HeldCast made = new HeldCast(d, key);
        operandCasts++;
        gcParams.putInt(0, ld);
        gcParams.putInt(4, dstLd);
        for (int g : reading) {
            gcParams.putLong(GC_OFF_SRC + 8L * entries, memory.addr(t, what, off[g], 0));
            gcParams.putLong(GC_OFF_DST + 8L * entries, d.address() + 2 * blockAt.get(g));
            gcParams.putInt(GC_OFF_ROWS + 4L * entries, rows[g]);
            gcParams.putInt(GC_OFF_COLS + 4L * entries, cols[g]);
            entries++;
        }
        gcParams.putInt(8, entries);
        gcParams.putInt(12, 0);
        long perBlock = 256L * gcUnroll; // GC_UNROLL chunks a thread
        int gridX = (int) Math.max(1, Math.min(65535, (maxChunks + perBlock - 1) / perBlock));
        CUfunc_st f = launcher.function(KernelLauncher.GROUPED_GEMM, "grouped_cast_bf16");
        Cuda.checkDriver(cudart.cuLaunchKernel(f, gridX, entries, 1, 256, 1, 1, 0, device.stream(), gcArgPtrs,
                (PointerPointer<?>) null), "cuLaunchKernel(grouped_cast_bf16, " + what + ", " + entries + " groups)");
        return made;
    }

    /**
     * What a {@link #castGroupedOperand} converts, as numbers: the stride, then for each group that reads the
     * operand, in group order, its index and its source block's device address, rows and columns. Equal keys give
     * equal copies, laid out alike, while the source memory is unchanged.
     */
    private long[] castKey(Tensor t, String what, int[] off, int ld, int[] rows, int[] cols, int[] reading) {
        long[] key = new long[1 + 4 * reading.length];
        key[0] = ld;
        for (int i = 0; i < reading.length; i++) {
            int g = reading[i];
            key[1 + 4 * i] = g;
            key[2 + 4 * i] = memory.addr(t, what, off[g], 0);
            key[3 + 4 * i] = rows[g];
            key[4 + 4 * i] = cols[g];
        }
        return key;
    }

    /**
     * Only the bf16 operand casts that {@link CudaBackend.GroupedMode#KERNEL} runs before its kernels (same grouping:
     * m, n, k > 0, largest k first, 64 groups a launch), the scratch released at once (timings of the casts alone).
     */
    void castOnly(boolean transA, boolean transB, int groups, int[] m, int[] n, int[] k, Tensor a, int[] aOff,
                  int lda, Tensor b, int[] bOff, int ldb) {
        int[] active = new int[groups];
        int count = 0;
        for (int g = 0; g < groups; g++) {
            if (m[g] > 0 && n[g] > 0 && k[g] > 0) {
                active[count++] = g;
            }
        }
        int[][] dims = operandDims(transA, transB, m, n, k);
        long[] at = new long[MAX_GROUPS + 1];
        for (int start = 0; start < count; start += MAX_GROUPS) {
            int here = Math.min(MAX_GROUPS, count - start);
            HeldCast a16 = castGroupedOperand(a, "A", aOff, lda, dims[0], dims[1], k, active, start, here, at,
                    List.of());
            HeldCast b16 = castGroupedOperand(b, "B", bOff, ldb, dims[2], dims[3], k, active, start, here, at,
                    List.of());
            if (a16 != null) {
                memory.release(a16.copy());
            }
            if (b16 != null) {
                memory.release(b16.copy());
            }
        }
    }
}

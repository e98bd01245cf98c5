package dev.sparkmoe.parallel.memory;

import java.util.ArrayList;
import java.util.List;

/**
 * What the backend itself allocates, beyond the tensors the model asks for. The CPU backend's kernels allocate
 * nothing a {@code MemoryTracker} sees; the CUDA backend ({@code CudaBackend}) makes the experts' GEMM operands BF16
 * tensors at bf16 precision ({@code emptyGemmOperand}), reads attention's operands in bf16 for its flash kernels (the
 * model holds them so; a bf16 copy of the output gradient in the backward) (or uses T x T score buffers under a
 * 512 MiB budget in its f32 path), reads a BF16 weight (a kept compute copy) in
 * place where the grouped GEMM kernel can and widens it into an f32 copy where it cannot, rounds the grouped GEMM's
 * other operands into bf16 copies that it keeps for the very next grouped GEMM, and takes a row buffer for the
 * cross-entropy.
 */
final class DeviceModel {
    /** CudaBackend.DEFAULT_ATTENTION_CHUNK_BYTES: the budget of the f32 attention path's score buffers. */
    static final long ATTENTION_CHUNK_BYTES = 512L << 20;
    /** Groups one grouped GEMM launch takes (CudaBackend.GG_MAX_GROUPS); only a single launch keeps its copies. */
    static final int GROUPED_MAX_GROUPS = 64;

    private final Ledger mem;
    private final boolean cuda;
    private final boolean bf16;
    private final List<Cast> heldCasts = new ArrayList<>();
    private long weightCasts;   // cast copies made of the experts' weights (UnitLayout.Param operands)
    private long bf16InPlace;   // BF16 weights (compute copies) the kernel read in place
    private long widened;       // BF16 weights widened into f32 copies first

    /**
     * An operand of a grouped GEMM: its identity, its elements, whether the kernel reads it in place (a bf16 image,
     * or a BF16 tensor it can read: {@code GroupedGemmOperands.readableInPlace}), and whether it is a BF16 tensor that
     * the kernel cannot read in place, which the backend widens into a new f32 tensor first.
     */
    record Operand(Object key, long elements, boolean image, boolean widen) {
        Operand(Object key, long elements, boolean image) {
            this(key, elements, image, false);
        }

        /**
         * A BF16 tensor (a weight's compute copy, an activation): read in place where {@code inPlace}, else widened.
         */
        static Operand bf16(Object key, long elements, boolean inPlace) {
            return new Operand(key, elements, inPlace, !inPlace);
        }
    }

    private record Cast(Object key, Ledger.Buf copy) {
    }

    /** The key of the second column block of a [rows, 2I] operand (its first block's key is the tensor's). */
    private record SecondBlock(Object of) {
    }

    /** The key of a widened operand: a new f32 tensor at each call, so never a kept copy's. */
    private record Widened(Object of) {
    }

    DeviceModel(Ledger mem, PlanRequest r) {
        this.mem = mem;
        this.cuda = r.device() == PlanRequest.Device.CUDA;
        this.bf16 = r.bf16Device();
    }

    boolean cuda() {
        return cuda;
    }

    /** Backend.emptyGemmOperand: a BF16 tensor (2 bytes an element) at bf16 on CUDA, else f32. */
    Ledger.Buf operand(Category c, long elements, String what) {
        return mem.floats(c, elements, bf16, what);
    }

    /**
     * A tensor made by {@link #operand} as a grouped GEMM reads it, its blocks {@code cols} wide: at bf16 a BF16
     * tensor, read in place where its rows are whole 16-byte chunks (cols a multiple of 8, as
     * {@code GroupedGemm.takesAsIs} asks), else widened; in f32 an f32 tensor (cast by nothing here).
     */
    Operand gemmOperand(Ledger.Buf b, long elements, int cols) {
        return bf16 ? Operand.bf16(b, elements, cols % 8 == 0) : new Operand(b, elements, false);
    }

    /**
     * A grouped GEMM of {@code groups} experts. An operand that is not a bf16
     * image is rounded into a bf16 copy, unless the previous grouped GEMM copied the same one; the copies of the
     * previous call that this one does not use are freed after it, and this call's are kept for the next one (when
     * the call is a single launch). Nothing of this on the CPU or in f32.
     */
    void groupedGemm(int groups, Operand... operands) {
        if (!bf16) {
            return;
        }
        // CudaBackend.groupedGemm: a BF16 operand the kernel cannot read in place becomes a new f32 tensor first,
        // cast as any f32 operand, and released after the call; those releases are backend calls, so the next call
        // drops the copies this one keeps
        List<Ledger.Buf> wide = new ArrayList<>();
        Operand[] in = operands.clone();
        for (int i = 0; i < in.length; i++) {
            Operand o = in[i];
            if (o.widen()) {
                wide.add(mem.f32(Category.WORKSPACE, o.elements(), "f32 copy of a bf16 grouped GEMM operand"));
                in[i] = new Operand(new Widened(o.key()), o.elements(), false);
                if (o.key() instanceof UnitLayout.Param) {
                    widened++;
                }
            } else if (o.image() && o.key() instanceof UnitLayout.Param p && p.computeCopy != null) {
                bf16InPlace++;
            }
        }
        if (groups > GROUPED_MAX_GROUPS) { // several launches, each with its own copies, freed after it
            dropCasts();
            double share = (double) GROUPED_MAX_GROUPS / groups;
            List<Ledger.Buf> made = new ArrayList<>();
            for (Operand o : in) {
                if (!o.image()) {
                    made.add(mem.bytes(Category.WORKSPACE, 2 * (long) Math.ceil(o.elements() * share)));
                    countCast(o);
                }
            }
            for (Ledger.Buf b : made) {
                mem.free(b);
            }
        } else {
            castAndKeep(in);
        }
        if (!wide.isEmpty()) {
            for (Ledger.Buf b : wide) {
                mem.free(b);
            }
            dropCasts();
        }
    }

    /** A single launch: casts the operands not read in place, reusing the previous call's copy of the same one. */
    private void castAndKeep(Operand[] operands) {
        List<Cast> offered = new ArrayList<>(heldCasts);
        heldCasts.clear();
        for (Operand o : operands) {
            if (o.image()) {
                continue;
            }
            Cast reuse = null;
            for (Cast h : offered) {
                if (h.key() == o.key()) {
                    reuse = h;
                }
            }
            if (reuse != null) {
                offered.remove(reuse);
                heldCasts.add(reuse);
            } else {
                heldCasts.add(new Cast(o.key(), mem.bytes(Category.WORKSPACE, 2 * o.elements())));
                countCast(o);
            }
        }
        for (Cast h : offered) {
            mem.free(h.copy());
        }
    }

    private void countCast(Operand o) {
        Object key = o.key() instanceof Widened w ? w.of() : o.key();
        if (key instanceof UnitLayout.Param) {
            weightCasts++;
        }
    }

    /** Cast copies made of the experts' weights (widened ones included) so far (tests). */
    long weightCasts() {
        return weightCasts;
    }

    /** Compute copies of the experts' weights the kernel read in place so far (tests). */
    long bf16InPlace() {
        return bf16InPlace;
    }

    /** Compute copies of the experts' weights widened into f32 copies so far (tests). */
    long widened() {
        return widened;
    }

    /**
     * Backend.groupedGemmSplitB as one {@link #groupedGemm} a block of B (the interface's default). The CUDA backend's
     * fused launch (sm90, both blocks bf16 compute copies read in place) takes A as {@link #groupedGemm} does, so
     * where A is an image (the experts at ep 1) both ways hold the same memory. With transB both read {@code a} whole
     * (the routed rows: cast once, the copy kept for the second); without, {@code a} is A's first column block [rows,
     * split] and the second reads the other one ({@link #secondBlock}), a copy of its own where A is not an image.
     */
    void groupedGemmSplitB(int groups, boolean transB, Operand a, Operand b1, Operand b2) {
        groupedGemm(groups, a, b1);
        groupedGemm(groups, transB ? a : secondBlock(a), b2);
    }

    /** The other column block of the same size of the [rows, 2 * cols] operand whose first block is {@code first}. */
    static Operand secondBlock(Operand first) {
        return new Operand(new SecondBlock(first.key()), first.elements(), first.image(), first.widen());
    }

    /** Any other backend call but the next drops the kept copies. */
    void dropCasts() {
        for (Cast h : heldCasts) {
            mem.free(h.copy());
        }
        heldCasts.clear();
    }

    private boolean flash(int headDim) {
        return bf16 && (headDim == 64 || headDim == 128);
    }

    /**
     * Backend.attentionInputDType is BF16 at this head dim: the flash kernels run, and the model holds q, k and v in
     * bf16 for them (no copies made inside attention).
     */
    boolean attentionInBf16(int headDim) {
        return cuda && flash(headDim);
    }

    /** The transient scratch of attentionForward. */
    void attentionForward(int batch, int seqLen, int qHeads, int kvHeads, int headDim) {
        if (!cuda) {
            return;
        }
        long n = (long) batch * seqLen;
        if (flash(headDim)) { // q, k and v held in bf16 by the model: read as they are
            return;
        } else {
            scratch(4 * chunkElements(seqLen, qHeads / kvHeads, kvHeads, 1));
        }
    }

    /** The transient scratch of attentionBackward. */
    void attentionBackward(int batch, int seqLen, int qHeads, int kvHeads, int headDim) {
        if (!cuda) {
            return;
        }
        long n = (long) batch * seqLen;
        long di = 4 * n * qHeads;
        if (flash(headDim)) { // Di and bf16 dO (q, k and v held in bf16 by the model)
            scratch(di, 2 * n * qHeads * headDim);
        } else { // Di and two [heads, T, T] buffers sharing the budget
            long chunk = 4 * chunkElements(seqLen, qHeads / kvHeads, kvHeads, 2);
            scratch(di, chunk, chunk);
        }
    }

    /** CudaBackend.attentionChunk: elements of one T x T buffer for the heads that fit the budget. */
    static long chunkElements(int seqLen, int group, int kvHeads, int buffers) {
        long perHead = (long) seqLen * seqLen * 4L * buffers;
        long maxHeads = Math.max(1, ATTENTION_CHUNK_BYTES / perHead);
        int nG = (int) Math.min(kvHeads, maxHeads);
        int nHH = nG == kvHeads ? (int) Math.max(1, Math.min(group, maxHeads / kvHeads)) : 1;
        return (long) nHH * nG * seqLen * seqLen;
    }

    /** crossEntropy's per-row loss buffer (doubles). */
    void crossEntropy(long rows) {
        if (cuda) {
            scratch(8 * (rows + 1));
        }
    }

    private void scratch(long... bytes) {
        List<Ledger.Buf> made = new ArrayList<>();
        for (long b : bytes) {
            made.add(mem.bytes(Category.WORKSPACE, b));
        }
        for (Ledger.Buf b : made) {
            mem.free(b);
        }
    }
}

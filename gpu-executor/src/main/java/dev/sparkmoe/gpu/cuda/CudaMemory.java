package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.javacpp.Pointer;

import java.util.ArrayDeque;

/**
 * The device memory of a {@link CudaBackend}: the caching allocator ({@link CachingAllocator}), the
 * {@link DeviceBuffer}s made from its blocks, and the allocation scopes ({@link CudaScope}: one training step is one
 * scope; a buffer made while scopes are open belongs to the innermost and is released when it closes). Also the
 * checked way from a tensor to device addresses ({@link #buf}, {@link #addr}): every part resolves its arguments
 * through it, so a host tensor, another backend's or a released one is refused by name. Releasing a buffer lets
 * {@link Bf16Images} settle the images (the bf16 wire's gathers) that live in it or stand for it first. Called under
 * the backend's lock.
 */
final class CudaMemory {
    private final CudaBackend owner;
    private final String name;
    private final CachingAllocator allocator = new CachingAllocator();
    private final ArrayDeque<CudaScope> scopes = new ArrayDeque<>();
    private Bf16Images images;
    private long nextBufferId;
    private long nextScopeId;

    CudaMemory(CudaBackend owner, String name) {
        this.owner = owner;
        this.name = name;
    }

    /** The backend whose buffers these are. */
    CudaBackend owner() {
        return owner;
    }

    /** The image registry that {@link #free} consults (set once, right after construction). */
    void attach(Bf16Images images) {
        this.images = images;
    }

    /** Bytes an element of {@code d} takes on the device: its size (BF16 and F16 are 2 bytes, not f32 values). */
    static int elementBytes(DType d) {
        return d.byteSize();
    }

    /** A new buffer of {@code bytes}, in the innermost open scope. */
    DeviceBuffer allocate(long bytes) {
        long[] block = new long[1];
        long address = allocator.allocate(bytes, block);
        return inScope(new DeviceBuffer(address, bytes, block[0], owner, nextBufferId++));
    }

    /** A new buffer outside every scope (persistent tables, the error word). */
    DeviceBuffer allocateUnscoped(long bytes) {
        ArrayDeque<CudaScope> hold = new ArrayDeque<>(scopes);
        scopes.clear();
        try {
            return allocate(bytes);
        } finally {
            scopes.addAll(hold);
        }
    }

    /** Registers a new buffer with the innermost open scope, if any (closing it releases the buffer). */
    private DeviceBuffer inScope(DeviceBuffer b) {
        CudaScope s = scopes.peek();
        if (s != null) {
            b.scope = s;
            s.buffers.add(b);
        }
        return b;
    }

    /** An allocator block for a buffer that gave its own back ({@link DeviceBuffer#rebind}). */
    long allocateBlock(long bytes, long[] block) {
        return allocator.allocate(bytes, block);
    }

    /** Gives a buffer's block back to the allocator while the buffer lives on (held by bf16 images). */
    void releaseBlock(DeviceBuffer b) {
        allocator.release(b.rawAddress(), b.blockBytes());
        b.backed = false;
    }

    /** Marks {@code b} released and gives its block back (stream-ordered: later users queue behind its readers). */
    void free(DeviceBuffer b) {
        if (b.released) {
            throw new IllegalStateException("double release of " + b);
        }
        b.released = true; // first: the image bookkeeping below must not free it again
        images.released(b);
        if (b.backed) {
            allocator.release(b.rawAddress(), b.blockBytes());
        }
    }

    /** {@link #free} and out of its scope: the release of a scratch buffer or tensor before its scope closes. */
    void release(DeviceBuffer b) {
        free(b);
        if (b.scope != null) {
            b.scope.buffers.remove(b);
        }
    }

    void release(Tensor t) {
        release((DeviceBuffer) t.deviceHandle());
    }

    Tensor newTensor(DType dtype, int... shape) {
        long n = Tensor.numel(shape);
        return Tensor.onDevice(dtype, allocate(n * elementBytes(dtype)), shape);
    }

    /** A one-dimensional scratch tensor of {@code n} elements (released by the caller with {@link #release}). */
    Tensor scratch(DType dtype, int n) {
        return newTensor(dtype, n);
    }

    /** The live buffer of a tensor of this backend; anything else is refused, naming {@code what}. */
    DeviceBuffer buf(Tensor t, String what) {
        if (t == null) {
            throw new IllegalArgumentException(what + " is null");
        }
        if (t.isHost()) {
            throw new IllegalArgumentException(what + " " + t + " is a host tensor; upload it to " + name + " first");
        }
        if (!(t.deviceHandle() instanceof DeviceBuffer) || ((DeviceBuffer) t.deviceHandle()).owner() != owner) {
            throw new IllegalArgumentException(what + " " + t + " lives on another backend (" + t.deviceHandle()
                    + "), not on " + name);
        }
        DeviceBuffer b = (DeviceBuffer) t.deviceHandle();
        if (b.released) {
            throw new IllegalStateException(what + " " + t + " was released (" + b + ")");
        }
        return b;
    }

    /** Device pointer to element {@code off} of t, after checking that [off, off + n) lies inside it. */
    Pointer ptr(Tensor t, String what, long off, long n) {
        DeviceBuffer b = buf(t, what);
        if (off < 0 || n < 0 || off + n > t.numel()) {
            throw new IndexOutOfBoundsException(what + ": elements [" + off + ", " + (off + n) + ") of " + t
                    + " (" + t.numel() + " elements)");
        }
        return RawPointer.of(b.address() + off * elementBytes(t.dtype()), 0);
    }

    /**
     * The device address of element {@code off} of t, after checking that [off, off + n) lies inside it, for a kernel
     * that reads or writes it as F32 (floating) or as its integer dtype: a BF16 or F16 tensor is refused, naming
     * {@code what}. The ops that take those ({@link #addrOf}) are named in {@link CudaBackend#gemmDType()}.
     */
    long addr(Tensor t, String what, long off, long n) {
        if (t != null && (t.dtype() == DType.BF16 || t.dtype() == DType.F16)) {
            throw new IllegalArgumentException(what + " is " + t + ": this op reads and writes F32 on the GPU; a "
                    + t.dtype() + " tensor is taken only by gemm (both operands), groupedGemm, convert, copy, "
                    + "crossEntropy's gradient, the grouped GEMM operands that gatherRows, siluMulForward, "
                    + "siluMulBackward and moeCombineBackward write, rmsNormForward's output, rmsNormRopeForward's "
                    + "output, rmsNormRopeBackward's dx, gatherRows' source and attention's q, k and v. Convert it to "
                    + "F32 first (Backend.convert)");
        }
        return ptr(t, what, off, n).address();
    }

    /** As {@link #addr} for an op that takes {@code t} in dtype {@code expected} (BF16 included). */
    long addrOf(Tensor t, DType expected, String what, long off, long n) {
        if (t == null || t.dtype() != expected) {
            throw new IllegalArgumentException(what + " must be " + expected + ", got " + t);
        }
        return ptr(t, what, off, n).address();
    }

    /**
     * The address of an F32 or BF16 tensor, for the ops that take either (a BF16 input read as it is, a BF16 output
     * written rounded); other dtypes are refused as {@link #addr} refuses them.
     */
    long addrF32OrBf16(Tensor t, String what, long off, long n) {
        return t != null && t.dtype() == DType.BF16 ? addrOf(t, DType.BF16, what, off, n) : addr(t, what, off, n);
    }

    static Pointer ptr(DeviceBuffer b, long byteOff) {
        return RawPointer.of(b.address() + byteOff, 0);
    }

    /**
     * Whether an op's output that may be a grouped GEMM operand ({@link CudaBackend#emptyGemmOperand}) is BF16 (the
     * op writes each value rounded to nearest even) rather than F32; any other dtype is refused, naming the op.
     */
    static boolean operandOutput(Tensor t, String op, String what) {
        if (t == null || (t.dtype() != DType.F32 && t.dtype() != DType.BF16)) {
            throw new IllegalArgumentException(op + ": " + what + " is " + t + "; it writes F32 or BF16 (a grouped "
                    + "GEMM operand, Backend.emptyGemmOperand): pass an F32 or BF16 " + what + " and convert it "
                    + "afterwards (Backend.convert)");
        }
        return t.dtype() == DType.BF16;
    }

    static void requireI32(Tensor t, String what) {
        if (t.dtype() != DType.I32) {
            throw new IllegalArgumentException(what + " must be I32, got " + t);
        }
    }

    /** Whether {@code t} is a live device tensor of this backend. */
    boolean owns(Tensor t) {
        return t != null && t.deviceHandle() instanceof DeviceBuffer b && b.owner() == owner && !b.released;
    }

    CudaScope openScope() {
        CudaScope s = new CudaScope(owner, nextScopeId++);
        scopes.push(s);
        return s;
    }

    int openScopes() {
        return scopes.size();
    }

    /** Refuses to close {@code s} while a scope opened after it is still open. */
    void checkInnermost(CudaScope s) {
        if (scopes.peek() != s) {
            throw new IllegalStateException("scope #" + s.id + " closed while an inner scope #"
                    + scopes.peek().id + " is still open; close scopes innermost first");
        }
    }

    /** Closes the innermost scope {@code s}: its buffers that are still live are released. */
    void close(CudaScope s) {
        scopes.pop();
        s.open = false;
        for (DeviceBuffer b : s.buffers) {
            if (!b.released) {
                free(b);
            }
        }
        s.buffers.clear();
    }

    MemoryStats stats() {
        return allocator.stats();
    }

    void resetPeak() {
        allocator.resetPeak();
    }

    /** cudaFree of every cached block. */
    void emptyCache() {
        allocator.emptyCache();
    }
}

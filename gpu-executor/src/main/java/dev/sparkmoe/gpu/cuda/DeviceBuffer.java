package dev.sparkmoe.gpu.cuda;

/**
 * The device handle of a {@link dev.sparkmoe.core.tensor.Tensor} made by a {@link CudaBackend}
 * ({@code Tensor.deviceHandle()}): a device pointer, the bytes asked for, the size of the allocator block holding
 * them, the owning backend, and whether the memory was given back. Views of a tensor share its buffer.
 */
public final class DeviceBuffer implements DeviceMemory {
    private long address;
    private final long bytes;
    private long blockBytes;
    /**
     * Whether an allocator block backs it. A buffer whose every element is held by bf16 images gives its block back
     * until the images are widened (only then are f32 values needed), and gets a new one then.
     */
    boolean backed = true;
    private final CudaBackend owner;
    private final long id;
    volatile boolean released;
    CudaScope scope;
    /**
     * The bf16 images of ranges of this f32 buffer whose f32 values are not written yet ({@link
     * CudaBackend#adoptBf16Images}); null when there are none. {@link #address()} writes them out first.
     */
    java.util.List<Bf16Images.Image> images;
    /** For a bf16 scratch buffer: the images that live in it, which it must outlive; null for other buffers. */
    java.util.List<Bf16Images.Image> imagesIn;

    DeviceBuffer(long address, long bytes, long blockBytes, CudaBackend owner, long id) {
        this.address = address;
        this.bytes = bytes;
        this.blockBytes = blockBytes;
        this.owner = owner;
        this.id = id;
    }

    /**
     * The device address of the first element, for a caller about to read or write the f32 values: a buffer that
     * holds bf16 images of unwritten ranges first has them widened into place (queued on the owner's stream), so
     * that every reader sees the values and no writer is overwritten later.
     */
    @Override
    public long address() {
        if (images != null) {
            owner.materialize(this);
        }
        return address;
    }

    /** The device address without writing pending images out (the allocator's and the images' own bookkeeping). */
    long rawAddress() {
        return address;
    }

    /** Backs it with a new allocator block (after it gave its own back to its images). */
    void rebind(long newAddress, long newBlockBytes) {
        this.address = newAddress;
        this.blockBytes = newBlockBytes;
        this.backed = true;
    }

    /** The bytes the tensor needs. */
    @Override
    public long bytes() {
        return bytes;
    }

    /** The size of the allocator block that holds them (a size class, at least {@link #bytes()}). */
    public long blockBytes() {
        return blockBytes;
    }

    public CudaBackend owner() {
        return owner;
    }

    public boolean isReleased() {
        return released;
    }

    @Override
    public String toString() {
        return owner.name() + " buffer #" + id + " at 0x" + Long.toHexString(address) + ", " + bytes + " B (block "
                + blockBytes + " B" + (scope != null ? ", scope #" + scope.id : ", unscoped")
                + (released ? ", RELEASED" : "") + (backed ? "" : ", held as bf16 images") + ")";
    }
}

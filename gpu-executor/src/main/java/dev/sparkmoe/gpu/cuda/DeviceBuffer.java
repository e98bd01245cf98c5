package dev.sparkmoe.gpu.cuda;

/**
 * The device handle of a {@link dev.sparkmoe.core.tensor.Tensor} made by a {@link CudaBackend}
 * ({@code Tensor.deviceHandle()}): a device pointer, the bytes asked for, the size of the allocator block holding
 * them, the owning backend, and whether the memory was given back. Views of a tensor share its buffer.
 */
public final class DeviceBuffer implements DeviceMemory {
    private final long address;
    private final long bytes;
    private final long blockBytes;
    private final CudaBackend owner;
    private final long id;
    volatile boolean released;
    CudaBackend.CudaScope scope;

    DeviceBuffer(long address, long bytes, long blockBytes, CudaBackend owner, long id) {
        this.address = address;
        this.bytes = bytes;
        this.blockBytes = blockBytes;
        this.owner = owner;
        this.id = id;
    }

    /** The device address of the first element. */
    @Override
    public long address() {
        return address;
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
                + (released ? ", RELEASED" : "") + ")";
    }
}

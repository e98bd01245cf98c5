package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.backend.Backend;

import java.util.ArrayList;
import java.util.List;

/**
 * An allocation scope of a {@link CudaBackend} ({@link CudaBackend#openScope()}); closing it releases the buffers
 * allocated in it that are still live. Scopes close innermost first.
 */
public final class CudaScope implements Backend.Scope {
    final long id;
    final List<DeviceBuffer> buffers = new ArrayList<>();
    private final CudaBackend owner;
    boolean open = true;

    CudaScope(CudaBackend owner, long id) {
        this.owner = owner;
        this.id = id;
    }

    @Override
    public void close() {
        owner.closeScope(this);
    }

    /** Buffers allocated in this scope and not yet released. */
    public int liveBuffers() {
        synchronized (owner) {
            return (int) buffers.stream().filter(b -> !b.released).count();
        }
    }
}

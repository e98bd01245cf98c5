package dev.sparkmoe.gpu.cuda;

import org.bytedeco.javacpp.Pointer;

/**
 * A JavaCPP pointer to a raw address (device or pinned host memory) that owns nothing: never dereferenced on the
 * host, never freed by JavaCPP.
 */
public final class RawPointer extends Pointer {

    private RawPointer(long address, long bytes) {
        this.address = address;
        this.capacity = bytes;
        this.limit = bytes;
    }

    public static RawPointer of(long address, long bytes) {
        return new RawPointer(address, bytes);
    }
}

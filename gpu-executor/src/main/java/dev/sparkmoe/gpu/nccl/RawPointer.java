package dev.sparkmoe.gpu.nccl;

import org.bytedeco.javacpp.Pointer;

/** A JavaCPP pointer to a raw address (device or pinned host memory) that owns nothing. */
final class RawPointer extends Pointer {

    RawPointer(long address, long bytes) {
        this.address = address;
        this.capacity = bytes;
        this.limit = bytes;
    }

    static RawPointer of(long address, long bytes) {
        return new RawPointer(address, bytes);
    }
}

package dev.sparkmoe.gpu.cuda;

import org.bytedeco.javacpp.Pointer;

/** A JavaCPP {@link Pointer} naming a raw device address (never dereferenced on the host, never freed by JavaCPP). */
final class DevicePointer extends Pointer {
    DevicePointer(long address) {
        super((Pointer) null);
        this.address = address;
    }
}

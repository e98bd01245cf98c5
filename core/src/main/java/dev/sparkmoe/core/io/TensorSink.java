package dev.sparkmoe.core.io;

import java.io.IOException;

/** Receives tensors one at a time, as f32 values (a file writer converts them to the dtype it stores). */
@FunctionalInterface
public interface TensorSink {

    /**
     * One tensor: the {@code numel(shape)} values of {@code data} from {@code offset}, row-major. The values stay the
     * caller's: a sink copies what it keeps, and must not change them.
     */
    void write(String name, int[] shape, float[] data, int offset) throws IOException;
}

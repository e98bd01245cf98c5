package dev.sparkmoe.spark.ckpt;

import java.io.IOException;

/**
 * A committed checkpoint's file does not hold what its manifest recorded: Hadoop's checksum failed, or the length or
 * CRC-32 differs from the manifest's, or the tensors cannot be parsed. Such a checkpoint is set aside
 * ({@link CheckpointStore#setAside}), never deleted, and the run resumes from the newest intact one.
 */
public final class DamagedCheckpointException extends IOException {
    private static final long serialVersionUID = 1L;
    private final long step;

    public DamagedCheckpointException(long step, String message, Throwable cause) {
        super(message, cause);
        this.step = step;
    }

    /** The step of the damaged checkpoint. */
    public long step() {
        return step;
    }
}

package dev.sparkmoe.spark.ckpt;

/**
 * The newest checkpoint exists and is intact but this run cannot resume from it: it was written at another layout,
 * with other data or settings, or by a version with another shard placement. Retrying cannot help; the driver says
 * to start afresh in another checkpoint directory instead of to run again.
 */
public final class CheckpointMismatchException extends IllegalStateException {
    private static final long serialVersionUID = 1L;

    public CheckpointMismatchException(String message) {
        super(message);
    }

    public CheckpointMismatchException(String message, Throwable cause) {
        super(message, cause);
    }
}

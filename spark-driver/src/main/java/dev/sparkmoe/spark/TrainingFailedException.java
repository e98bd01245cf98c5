package dev.sparkmoe.spark;

/** Every attempt of the barrier stage failed; the message names the last error and the checkpoint to resume from. */
public class TrainingFailedException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public TrainingFailedException(String message, Throwable cause) {
        super(message, cause);
    }
}

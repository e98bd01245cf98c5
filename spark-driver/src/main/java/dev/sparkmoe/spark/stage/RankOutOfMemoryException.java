package dev.sparkmoe.spark.stage;

/**
 * A rank ran out of memory. Thrown in place of the {@link OutOfMemoryError} once the rank has released its trainer:
 * Spark ends an executor on an {@code Error} (in local mode the whole application) before the driver learns which
 * rank failed and why; this exception fails the attempt like any other and names both. It keeps the error's stack
 * trace but not the error itself as its cause, since Spark looks for fatal errors among the causes too.
 */
public final class RankOutOfMemoryException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public RankOutOfMemoryException(int rank, OutOfMemoryError oom) {
        super("rank " + rank + " ran out of memory: " + oom + " (this JVM's heap limit is "
                + Runtime.getRuntime().maxMemory() / (1024 * 1024) + " MiB); give the executors more memory "
                + "(spark.executor.memory; in local mode the driver's -Xmx), or lower training.batch_sequences or "
                + "training.seq_len, or raise training.grad_accum");
        setStackTrace(oom.getStackTrace());
    }
}

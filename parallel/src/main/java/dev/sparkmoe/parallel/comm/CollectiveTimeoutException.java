package dev.sparkmoe.parallel.comm;

/** A collective did not complete because some members never arrived (or failed) within the timeout. */
public class CollectiveTimeoutException extends CommunicatorException {
    private static final long serialVersionUID = 1L;

    public CollectiveTimeoutException(String message) {
        super(message);
    }
}

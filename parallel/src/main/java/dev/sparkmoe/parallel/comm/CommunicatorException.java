package dev.sparkmoe.parallel.comm;

/** A collective failed: mismatched arguments, a peer that failed, a transport error. */
public class CommunicatorException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public CommunicatorException(String message) {
        super(message);
    }

    public CommunicatorException(String message, Throwable cause) {
        super(message, cause);
    }
}

package dev.sparkmoe.gpu.cuda;

/** A failed CUDA runtime, driver, NVRTC or cuBLAS call: names the call and decodes the status code. */
public final class CudaException extends RuntimeException {
    private final String library;
    private final int status;

    public CudaException(String library, String call, int status, String decoded, String hint) {
        super(library + " call " + call + " failed with status " + status + " (" + decoded + ")"
                + (hint == null || hint.isEmpty() ? "" : "; " + hint));
        this.library = library;
        this.status = status;
    }

    /** "cudart", "driver", "nvrtc" or "cublas". */
    public String library() {
        return library;
    }

    /** The raw status code returned by the call. */
    public int status() {
        return status;
    }
}

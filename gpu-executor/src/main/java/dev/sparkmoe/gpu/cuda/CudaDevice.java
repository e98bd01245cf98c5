package dev.sparkmoe.gpu.cuda;

import org.bytedeco.cuda.cudart.CUevent_st;
import org.bytedeco.cuda.cudart.CUstream_st;
import org.bytedeco.cuda.cudart.cudaDeviceProp;
import org.bytedeco.cuda.global.cudart;

/**
 * The device a {@link CudaBackend} runs on and its one compute stream: the CUDA context (made current on
 * construction and again for any other thread that calls the backend), what the device reports (name, SM count and
 * compute capability, the shared memory a block may opt into), and the non-blocking stream on which every copy,
 * kernel and cuBLAS call of the backend is queued in order. Called under the backend's lock.
 */
final class CudaDevice {
    private final int ordinal;
    private final String name;
    private final String deviceName;
    private final int smCount;
    private final int smMajor;
    private final int smMinor;
    private final long sharedMemPerBlockOptin;
    private final CUstream_st stream;
    private Thread lastThread;

    /**
     * Makes {@code ordinal} current on this thread, creates its primary context and reads its properties; the
     * stream is made by {@link #createStream()}, once the backend's other parts are set up.
     */
    CudaDevice(int ordinal) {
        if (!Cuda.available()) {
            throw new IllegalStateException("CUDA is not available: " + Cuda.unavailableReason()
                    + " (run with -Dorg.bytedeco.javacpp.pathsFirst=true and LD_LIBRARY_PATH naming the CUDA 13 "
                    + "libraries)");
        }
        this.ordinal = ordinal;
        this.name = "cuda:" + ordinal;
        Cuda.check(cudart.cudaSetDevice(ordinal), "cudaSetDevice(" + ordinal + ")");
        Cuda.check(cudart.cudaFree(null), "cudaFree(null) (context creation)");
        Cuda.checkDriver(cudart.cuInit(0), "cuInit(0)");
        lastThread = Thread.currentThread();
        cudaDeviceProp props = new cudaDeviceProp();
        Cuda.check(cudart.cudaGetDeviceProperties(props, ordinal), "cudaGetDeviceProperties(" + ordinal + ")");
        this.deviceName = props.name().getString();
        this.smCount = props.multiProcessorCount();
        this.smMajor = props.major();
        this.smMinor = props.minor();
        this.sharedMemPerBlockOptin = props.sharedMemPerBlockOptin();
        this.stream = new CUstream_st();
    }

    /** Creates the compute stream (non-blocking: it never waits for the legacy default stream). */
    void createStream() {
        Cuda.check(cudart.cudaStreamCreateWithFlags(stream, cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    }

    int ordinal() {
        return ordinal;
    }

    /** "cuda:N". */
    String name() {
        return name;
    }

    /** The device's name as the driver reports it ("NVIDIA H100 80GB HBM3"). */
    String deviceName() {
        return deviceName;
    }

    int smCount() {
        return smCount;
    }

    /** The compute capability's major number (8 for sm_80 and sm_86, 9 for sm_90). */
    int smMajor() {
        return smMajor;
    }

    int smMinor() {
        return smMinor;
    }

    /** The dynamic shared memory a block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin), in bytes. */
    long sharedMemPerBlockOptin() {
        return sharedMemPerBlockOptin;
    }

    CUstream_st stream() {
        return stream;
    }

    /** Makes this device current for the calling thread when the thread changed since the last call. */
    void enterThread() {
        Thread t = Thread.currentThread();
        if (t != lastThread) {
            Cuda.check(cudart.cudaSetDevice(ordinal), "cudaSetDevice(" + ordinal + ")");
            lastThread = t;
        }
    }

    /** Waits for everything queued on the stream. */
    void synchronizeStream() {
        Cuda.check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    }

    /**
     * Milliseconds of device time taken by the work {@code body} queues, measured with CUDA events on the stream
     * (waits for it).
     */
    float timeMillis(Runnable body) {
        CUevent_st start = new CUevent_st();
        CUevent_st end = new CUevent_st();
        Cuda.check(cudart.cudaEventCreate(start), "cudaEventCreate");
        Cuda.check(cudart.cudaEventCreate(end), "cudaEventCreate");
        try {
            Cuda.check(cudart.cudaEventRecord(start, stream), "cudaEventRecord");
            body.run();
            Cuda.check(cudart.cudaEventRecord(end, stream), "cudaEventRecord");
            Cuda.check(cudart.cudaEventSynchronize(end), "cudaEventSynchronize");
            float[] ms = new float[1];
            Cuda.check(cudart.cudaEventElapsedTime(ms, start, end), "cudaEventElapsedTime");
            return ms[0];
        } finally {
            Cuda.check(cudart.cudaEventDestroy(start), "cudaEventDestroy");
            Cuda.check(cudart.cudaEventDestroy(end), "cudaEventDestroy");
        }
    }

    /** Destroys the stream (after {@link #synchronizeStream()}). */
    void destroyStream() {
        Cuda.check(cudart.cudaStreamDestroy(stream), "cudaStreamDestroy");
    }
}

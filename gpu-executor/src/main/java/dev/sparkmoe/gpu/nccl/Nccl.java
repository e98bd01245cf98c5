package dev.sparkmoe.gpu.nccl;

import org.bytedeco.cuda.global.cudart;
import org.bytedeco.cuda.global.nccl;
import org.bytedeco.javacpp.IntPointer;
import org.bytedeco.javacpp.Loader;

/**
 * Whether NCCL can run here: the JavaCPP CUDA presets load ({@code libcudart.so.13}, {@code libnccl.so.2} and the
 * driver's {@code libcuda.so.1} found on {@code LD_LIBRARY_PATH}, with {@code -Dorg.bytedeco.javacpp.pathsFirst=true})
 * and at least one CUDA device is visible. {@link #probe()} never throws; its {@link Availability#reason()} says
 * what is missing.
 */
public final class Nccl {

    /** Result of {@link #probe()}. Versions are encoded as CUDA and NCCL do (e.g. 13000, 22809); 0 when unknown. */
    public record Availability(boolean ok, int deviceCount, int ncclVersion, int cudaRuntimeVersion,
                               int cudaDriverVersion, String reason) {

        /** One line for logs. */
        public String describe() {
            if (!ok) {
                return "NCCL unavailable: " + reason;
            }
            return "NCCL " + ncclVersionString(ncclVersion) + ", CUDA runtime " + cudaRuntimeVersion + ", driver API "
                    + cudaDriverVersion + ", " + deviceCount + " CUDA device(s)";
        }
    }

    private static Availability cached;

    private Nccl() {
    }

    /** "2.28.9" from 22809 (or from the pre-2.9 encoding 2708). */
    public static String ncclVersionString(int code) {
        if (code >= 10000) {
            return code / 10000 + "." + (code / 100) % 100 + "." + code % 100;
        }
        return code / 1000 + "." + (code / 100) % 10 + "." + code % 100;
    }

    /** Loads the natives once and reports; cached. */
    public static synchronized Availability probe() {
        if (cached == null) {
            cached = doProbe();
        }
        return cached;
    }

    private static Availability doProbe() {
        try {
            Loader.load(cudart.class);
        } catch (Throwable t) {
            return new Availability(false, 0, 0, 0, 0, "the CUDA runtime did not load (" + t
                    + "); hint: put libcudart.so.13 and the driver's libcuda.so.1 on LD_LIBRARY_PATH and run with "
                    + "-Dorg.bytedeco.javacpp.pathsFirst=true (bin/spark-moe-gpu does both)");
        }
        try {
            Loader.load(nccl.class);
        } catch (Throwable t) {
            return new Availability(false, 0, 0, 0, 0, "libnccl.so.2 did not load (" + t
                    + "); hint: pip's nvidia-nccl-cu13 puts it in site-packages/nvidia/nccl/lib; add that to "
                    + "LD_LIBRARY_PATH (bin/spark-moe-gpu finds it)");
        }
        try (IntPointer v = new IntPointer(1)) {
            int rt = 0;
            int drv = 0;
            if (cudart.cudaRuntimeGetVersion(v) == cudart.cudaSuccess) {
                rt = v.get();
            }
            if (cudart.cudaDriverGetVersion(v) == cudart.cudaSuccess) {
                drv = v.get();
            }
            int r = nccl.ncclGetVersion(v);
            if (r != nccl.ncclSuccess) {
                return new Availability(false, 0, 0, rt, drv, "ncclGetVersion returned " + NcclResults.name(r));
            }
            int ver = v.get();
            int e = cudart.cudaGetDeviceCount(v);
            if (e != cudart.cudaSuccess) {
                return new Availability(false, 0, ver, rt, drv, "cudaGetDeviceCount failed: "
                        + cudaError(e) + "; hint: no GPU visible (CUDA_VISIBLE_DEVICES?) or the driver is too old for "
                        + "CUDA runtime " + rt);
            }
            int n = v.get();
            if (n < 1) {
                return new Availability(false, 0, ver, rt, drv, "no CUDA device is visible");
            }
            return new Availability(true, n, ver, rt, drv, "");
        } catch (Throwable t) {
            return new Availability(false, 0, 0, 0, 0, "probing CUDA/NCCL failed: " + t);
        }
    }

    /** "cudaErrorNoDevice (100): no CUDA-capable device is detected". Needs the CUDA runtime loaded. */
    static String cudaError(int code) {
        String name;
        String text;
        try {
            name = cudart.cudaGetErrorName(code).getString();
            text = cudart.cudaGetErrorString(code).getString();
        } catch (Throwable t) {
            return "cudaError_t " + code;
        }
        return name + " (" + code + "): " + text;
    }
}

package dev.sparkmoe.gpu.runtime;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import java.util.Locale;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * Backend choice, explicit and logged (DESIGN convention 8): "cpu", "cuda" or "auto" (cuda when a GPU and the CUDA
 * libraries are present, cpu otherwise). The setting comes from the job (TrainerSpec.backend, the config key
 * training.backend; the standalone launcher's --backend).
 */
public final class Backends {
    private static final Logger LOG = Logger.getLogger(Backends.class.getName());

    private Backends() {
    }

    /** The requested choice, checked and lower-cased (null: "auto"). */
    public static String effectiveChoice(String requested) {
        String choice = requested == null ? "auto" : requested.trim().toLowerCase(Locale.ROOT);
        if (!choice.equals("cpu") && !choice.equals("cuda") && !choice.equals("auto")) {
            throw new IllegalArgumentException("unknown backend '" + requested + "'; expected cpu, cuda or auto "
                    + "(training.backend)");
        }
        return choice;
    }

    /**
     * Creates the backend for this rank; {@code deviceId} is the GPU ordinal (ignored on the CPU), and a CPU backend
     * runs its matrix products on {@code cpuBlasThreads} OpenBLAS threads ({@code training.cpu_blas_threads}). The
     * choice is logged at INFO when {@code announce} (one rank of a job, so that a job logs it once, not once per
     * rank), else at FINE.
     */
    public static Backend create(String requested, int deviceId, int cpuBlasThreads, boolean announce) {
        Level level = announce ? Level.INFO : Level.FINE;
        String choice = effectiveChoice(requested);
        Backend b;
        if (choice.equals("cpu")) {
            b = new CpuBackend(cpuBlasThreads);
        } else {
            String why = CudaSupport.unavailableReason();
            if (why == null) {
                b = CudaSupport.open(deviceId);
            } else if (choice.equals("cuda")) {
                throw new IllegalStateException("backend 'cuda' was requested but " + why
                        + "; set training.backend=cpu to train on the CPU");
            } else {
                LOG.log(level, "backend auto: no usable GPU (" + why + "), using the CPU backend");
                b = new CpuBackend(cpuBlasThreads);
            }
        }
        Backend chosen = b;
        LOG.log(level, () -> "backend: " + chosen.name() + " (requested " + choice + ")");
        return chosen;
    }
}

package dev.sparkmoe.gpu.cuda;

import java.util.Locale;

/**
 * What the benchmark entries outside this package may set on a {@link CudaBackend} to compare kernels in one run
 * (package-private hooks of the backend, not user settings).
 */
public final class KernelBenchHooks {
    private KernelBenchHooks() {
    }

    /**
     * The grouped GEMM kernel of {@link CudaBackend.GroupedMode#KERNEL}: {@code auto} (the default: sm90 on compute
     * capability 9.0), {@code mma_sync} or {@code sm90}; returns the kernel that runs now.
     */
    public static String setGroupedKernel(CudaBackend cuda, String kernel) {
        GroupedGemm.Kernel k;
        try {
            k = GroupedGemm.Kernel.valueOf(kernel.toUpperCase(Locale.ROOT));
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("--grouped-kernel " + kernel + ": auto, mma_sync or sm90", e);
        }
        cuda.setGroupedKernel(k);
        return cuda.effectiveGroupedKernel().name().toLowerCase(Locale.ROOT);
    }
}

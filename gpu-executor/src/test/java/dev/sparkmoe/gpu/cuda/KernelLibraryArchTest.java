package dev.sparkmoe.gpu.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Map;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/**
 * What KernelLibrary compiles each kernel file for, the in-memory headers the files include, and the host's mirror of
 * the sm90 kernel's tile macros (no GPU needed).
 */
class KernelLibraryArchTest {

    @Test
    void onlyTheSm90FileOnComputeCapability90GetsSm90a() {
        KernelLibrary h100 = new KernelLibrary(9, 0);
        assertEquals("sm_90a", h100.arch(KernelLauncher.GROUPED_GEMM_SM90));
        assertEquals("sm_90", h100.arch(KernelLauncher.GROUPED_GEMM));
        assertEquals("sm_90", h100.arch(KernelLauncher.ELEMENTWISE));
        assertEquals("sm_86", new KernelLibrary(8, 6).arch(KernelLauncher.GROUPED_GEMM_SM90));
        assertEquals("sm_100", new KernelLibrary(10, 0).arch(KernelLauncher.GROUPED_GEMM_SM90));
    }

    /** Every {@code #include "name"} of the package's kernel files names one of the headers handed to NVRTC. */
    @Test
    void everyQuotedIncludeIsAnInMemoryHeader() {
        Pattern include = Pattern.compile("#include\\s+\"([^\"]+)\"");
        Map<String, Integer> includes = new TreeMap<>();
        for (String file : KernelLaunchSitesTest.fileConstants().values()) {
            Matcher m = include.matcher(KernelLibrary.readResource(file));
            while (m.find()) {
                includes.merge(m.group(1), 1, Integer::sum);
                assertTrue(KernelLibrary.HEADERS.contains(m.group(1)), file + " includes \"" + m.group(1)
                        + "\", which is not in KernelLibrary.HEADERS " + KernelLibrary.HEADERS);
            }
        }
        assertEquals(Map.of("grouped_gemm_params.cuh", 2, "kernels_common.cuh", 7), includes,
                "both grouped GEMM files include grouped_gemm_params.cuh, the seven f32 kernel files kernels_common.cuh");
        assertTrue(KernelLibrary.readResource("grouped_gemm_params.cuh").contains("struct GBParams"));
        assertTrue(KernelLibrary.readResource("kernels_common.cuh").contains("void report(int* err"));
    }

    /** GroupedGemm.Tiles' defaults for the sm90 kernel are the file's GS_BN and GS_STAGES defaults. */
    @Test
    void theHostMirrorsTheSm90TileDefaults() {
        String src = KernelLibrary.readResource(KernelLauncher.GROUPED_GEMM_SM90);
        int bn = macroDefault(src, "GS_BN");
        int stages = macroDefault(src, "GS_STAGES");
        GroupedGemm.Tiles t = GroupedGemm.Tiles.fromDefines();
        assertEquals(bn, t.sm90TileN());
        assertEquals(stages * (128 * 64 * 2 + bn * 64 * 2) + 1024, t.sm90SharedBytes());
        assertTrue(t.sm90SharedBytes() <= 227 * 1024, "within the 227 KB a block may have on sm_90");
    }

    private static int macroDefault(String src, String name) {
        Matcher m = Pattern.compile("#ifndef " + name + "\\s+#define " + name + " (\\d+)").matcher(src);
        assertTrue(m.find(), name + " default not found");
        return Integer.parseInt(m.group(1));
    }
}

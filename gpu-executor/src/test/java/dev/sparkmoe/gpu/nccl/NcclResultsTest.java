package dev.sparkmoe.gpu.nccl;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/** CPU-only: decoding of ncclResult_t, version strings, and a probe that never throws. */
class NcclResultsTest {

    @Test
    void resultCodesHaveTheirEnumeratorNamesAndHints() {
        assertEquals("ncclSuccess", NcclResults.name(0));
        assertEquals("ncclUnhandledCudaError", NcclResults.name(1));
        assertEquals("ncclSystemError", NcclResults.name(2));
        assertEquals("ncclInternalError", NcclResults.name(3));
        assertEquals("ncclInvalidArgument", NcclResults.name(4));
        assertEquals("ncclInvalidUsage", NcclResults.name(5));
        assertEquals("ncclRemoteError", NcclResults.name(6));
        assertEquals("ncclInProgress", NcclResults.name(7));
        assertEquals("ncclResult_t(42)", NcclResults.name(42));
        assertTrue(NcclResults.hint(6).contains("peer"));
        assertTrue(NcclResults.hint(1).contains("NCCL_DEBUG"));
    }

    @Test
    void versionStrings() {
        assertEquals("2.28.9", Nccl.ncclVersionString(22809));
        assertEquals("2.29.3", Nccl.ncclVersionString(22903));
        assertEquals("2.7.8", Nccl.ncclVersionString(2708));
    }

    @Test
    void probeNeverThrowsAndExplainsItself() {
        Nccl.Availability a = Nccl.probe();
        if (a.ok()) {
            assertTrue(a.deviceCount() >= 1);
            assertTrue(a.describe().startsWith("NCCL "), a.describe());
        } else {
            assertFalse(a.reason().isBlank());
            assertTrue(a.describe().startsWith("NCCL unavailable: "), a.describe());
        }
    }

    @Test
    void optionsValidate() {
        NcclOptions o = NcclOptions.fromEnvironment(java.util.Map.of(NcclOptions.ENV_TIMEOUT_MS, "1500"), 1);
        assertEquals(1500, o.timeout().toMillis());
        assertEquals(1, o.device());
        assertEquals("world", o.name());
        assertEquals(120_000, o.initTimeout().toMillis());
        IllegalArgumentException bad = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                () -> NcclOptions.fromEnvironment(java.util.Map.of(NcclOptions.ENV_INIT_TIMEOUT_MS, "soon"), 0));
        assertTrue(bad.getMessage().contains(NcclOptions.ENV_INIT_TIMEOUT_MS + "='soon'"), bad.getMessage());
        IllegalArgumentException e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                () -> NcclOptions.defaults(-1));
        assertTrue(e.getMessage().contains("CUDA device (-1) must be >= 0"), e.getMessage());
    }
}

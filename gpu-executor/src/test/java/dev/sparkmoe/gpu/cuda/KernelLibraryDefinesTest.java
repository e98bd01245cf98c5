package dev.sparkmoe.gpu.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import org.junit.jupiter.api.Test;

/** The NVRTC tuning macros of -Dsparkmoe.cuda.defines (no GPU needed). */
class KernelLibraryDefinesTest {

    @Test
    void namesAndValuesBecomeDashDOptions() {
        assertEquals(List.of(), KernelLibrary.defines(""));
        assertEquals(List.of("-DGB_STAGES=2", "-DFLAG"), KernelLibrary.defines(" GB_STAGES=2 , FLAG,"));
    }

    @Test
    void anythingElseIsRefusedWithAnExample() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> KernelLibrary.defines("GB_STAGES=2 --use_fast_math"));
        assertTrue(e.getMessage().contains("NAME=VALUE") && e.getMessage().contains("GB_STAGES=2"),
                e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> KernelLibrary.defines("1X=2"));
    }
}

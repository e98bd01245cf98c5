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
        assertEquals(List.of("-DGG_MIN_BLOCKS=1", "-DFLAG"), KernelLibrary.defines(" GG_MIN_BLOCKS=1 , FLAG,"));
    }

    @Test
    void anythingElseIsRefusedWithAnExample() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> KernelLibrary.defines("GG_MIN_BLOCKS=1 --use_fast_math"));
        assertTrue(e.getMessage().contains("NAME=VALUE") && e.getMessage().contains("GG_MIN_BLOCKS=1"),
                e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> KernelLibrary.defines("1X=2"));
    }
}

package dev.sparkmoe.gpu.runtime;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.CpuBackend;
import org.junit.jupiter.api.Test;

/** The backend choice comes from the job alone (training.backend), checked by name; the CPU backend's threads too. */
class BackendsTest {

    @Test
    void theChoiceIsTheJobsCheckedAndLowerCased() {
        assertEquals("cuda", Backends.effectiveChoice(" CUDA "));
        assertEquals("auto", Backends.effectiveChoice(null));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> Backends.effectiveChoice("tpu"));
        assertTrue(e.getMessage().contains("'tpu'") && e.getMessage().contains("training.backend"), e.getMessage());
    }

    @Test
    void aCpuBackendGetsTheJobsBlasThreads() {
        try {
            assertInstanceOf(CpuBackend.class, Backends.create("cpu", -1, 2, true));
            assertEquals(2, CpuBackend.blasThreads());
        } finally {
            new CpuBackend(1);
        }
    }
}

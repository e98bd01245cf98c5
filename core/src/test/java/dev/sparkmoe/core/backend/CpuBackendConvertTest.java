package dev.sparkmoe.core.backend;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.junit.jupiter.api.Test;

/**
 * Backend.convert on the CPU: F32 to BF16 and F16 rounds to nearest even (ties to the even neighbour, NaN and the
 * infinities kept), back to F32 is exact, and a size or dtype mismatch is refused with both tensors named.
 */
class CpuBackendConvertTest {
    private final CpuBackend be = new CpuBackend();

    @Test
    void roundsToNearestEvenAndWidensExactly() {
        float one = 1f;
        float ulp = Math.ulp(one) * 65536; // bf16's step at 1: 2^-7
        float[] v = {one + ulp / 2, one + 1.5f * ulp, one + ulp / 2 + Math.ulp(one), -3.14159f, Float.NaN,
            Float.NEGATIVE_INFINITY, 0f, -0f, 1e-40f};
        Tensor src = Tensor.of(v.clone(), v.length);
        Tensor half = be.zeros(DType.BF16, v.length);
        be.convert(src, half);
        float[] h = half.floats();
        assertEquals(one, h[0], "a tie goes to the even neighbour (1.0)");
        assertEquals(one + 2 * ulp, h[1], "a tie goes to the even neighbour (1 + 2^-6)");
        assertEquals(one + ulp, h[2], "above the tie rounds up");
        for (int i = 0; i < v.length; i++) {
            assertEquals(DType.bf16ToFloat(DType.floatToBf16(v[i])), h[i], 0f, "element " + i);
        }
        assertTrue(Float.isNaN(h[4]));
        Tensor back = be.zeros(DType.F32, v.length);
        be.convert(half, back);
        assertTrue(back.bitwiseEquals(Tensor.of(h.clone(), v.length)), "bf16 -> f32 is exact");

        Tensor f16 = be.zeros(DType.F16, v.length);
        be.convert(src, f16);
        assertEquals(DType.f16ToFloat(DType.floatToF16(-3.14159f)), f16.floats()[3]);
    }

    @Test
    void refusesOtherSizesAndIntegerTensors() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> be.convert(be.zeros(DType.F32, 4), be.zeros(DType.BF16, 5)));
        assertTrue(e.getMessage().contains("same number of elements"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> be.convert(be.zeros(DType.I32, 4), be.zeros(DType.F32, 4)));
    }
}

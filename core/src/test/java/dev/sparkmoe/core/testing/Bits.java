package dev.sparkmoe.core.testing;

import static org.junit.jupiter.api.Assertions.assertEquals;

/** Bit-for-bit assertions on float arrays, for the tests that check two paths give the very same values. */
public final class Bits {
    private Bits() {
    }

    /** {@code got} equals {@code want} element by element, raw bits included (NaN payloads, the sign of zero). */
    public static void assertSameBits(float[] want, float[] got, String what) {
        assertEquals(want.length, got.length, what + ": lengths");
        for (int i = 0; i < want.length; i++) {
            if (Float.floatToRawIntBits(want[i]) != Float.floatToRawIntBits(got[i])) {
                throw new AssertionError(what + ": element " + i + " is " + got[i] + ", expected " + want[i]);
            }
        }
    }
}

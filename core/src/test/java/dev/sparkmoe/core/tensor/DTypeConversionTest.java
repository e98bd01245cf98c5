package dev.sparkmoe.core.tensor;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/** Worked examples for the bf16 / f16 conversions: round-to-nearest-even, subnormals, inf, NaN. */
class DTypeConversionTest {

    private static short bf(float f) {
        return DType.floatToBf16(f);
    }

    private static short h(float f) {
        return DType.floatToF16(f);
    }

    @Test
    void bf16ExactValues() {
        assertEquals((short) 0x3F80, bf(1f));
        assertEquals((short) 0xBFC0, bf(-1.5f));
        assertEquals((short) 0x0000, bf(0f));
        assertEquals((short) 0x8000, bf(-0f));
        assertEquals(1f, DType.bf16ToFloat((short) 0x3F80));
    }

    @Test
    void bf16RoundsToNearestEven() {
        // bf16 keeps 7 mantissa bits: near 1.0 the spacing is 2^-7, a tie is 2^-8 away
        assertEquals((short) 0x3F80, bf(1f + 0x1p-8f)); // tie, 0x3F80 is even -> down
        assertEquals((short) 0x3F82, bf(1f + 3 * 0x1p-8f)); // tie between 0x3F81 and 0x3F82 -> even, up
        assertEquals((short) 0x3F81, bf(1f + 0x1p-8f + 0x1p-20f)); // just above the tie -> up
        assertEquals((short) 0x3F80, bf(1f + 0x1p-8f - 0x1p-20f)); // just below -> down
        assertEquals((short) 0xBF80, bf(-(1f + 0x1p-8f))); // symmetric for negatives
        // rounding carries into the exponent
        assertEquals((short) 0x4000, bf(Float.intBitsToFloat(0x3FFFC000)));
    }

    @Test
    void bf16SubnormalsInfNaN() {
        float sub = Float.intBitsToFloat(0x00010000); // smallest bf16 subnormal 2^-133
        assertEquals((short) 0x0001, bf(sub));
        assertEquals(sub, DType.bf16ToFloat((short) 0x0001));
        assertEquals((short) 0x0000, bf(Float.MIN_VALUE)); // 2^-149 rounds to zero
        assertEquals((short) 0x0000, bf(Float.intBitsToFloat(0x00008000))); // tie to even 0
        assertEquals((short) 0x0002, bf(Float.intBitsToFloat(0x00018000))); // tie between 1 and 2 -> 2
        assertEquals((short) 0x7F80, bf(Float.POSITIVE_INFINITY));
        assertEquals((short) 0xFF80, bf(Float.NEGATIVE_INFINITY));
        assertEquals((short) 0x7F80, bf(Float.MAX_VALUE)); // overflows to inf, as torch does
        assertEquals((short) 0x7F7F, bf(Float.intBitsToFloat(0x7F7F7FFF)));
        short nan = bf(Float.NaN);
        assertTrue(Float.isNaN(DType.bf16ToFloat(nan)));
        // a NaN whose payload lives only in the low bits must not become inf
        short lowNan = bf(Float.intBitsToFloat(0x7F800001));
        assertTrue(Float.isNaN(DType.bf16ToFloat(lowNan)));
        assertEquals((short) 0xFFC0, bf(Float.intBitsToFloat(0xFF800001))); // sign kept, quiet
        assertEquals(Float.NEGATIVE_INFINITY, DType.bf16ToFloat((short) 0xFF80));
    }

    @Test
    void bf16EveryNonNaNPatternRoundTrips() {
        for (int b = 0; b < 0x10000; b++) {
            float f = DType.bf16ToFloat((short) b);
            if (Float.isNaN(f)) {
                assertTrue(Float.isNaN(DType.bf16ToFloat(bf(f))));
                continue;
            }
            assertEquals((short) b, bf(f), "bf16 0x" + Integer.toHexString(b));
            assertEquals(f, DType.roundToBf16(f));
        }
    }

    @Test
    void f16ExactValues() {
        assertEquals((short) 0x3C00, h(1f));
        assertEquals((short) 0xC000, h(-2f));
        assertEquals((short) 0x7BFF, h(65504f)); // largest finite
        assertEquals((short) 0x0400, h(0x1p-14f)); // smallest normal
        assertEquals((short) 0x8000, h(-0f));
        assertEquals(65504f, DType.f16ToFloat((short) 0x7BFF));
        assertEquals(0x1p-14f, DType.f16ToFloat((short) 0x0400));
    }

    @Test
    void f16RoundsToNearestEven() {
        // f16 keeps 10 mantissa bits: near 1.0 the spacing is 2^-10, a tie is 2^-11 away
        assertEquals((short) 0x3C00, h(1f + 0x1p-11f)); // tie -> even (down)
        assertEquals((short) 0x3C02, h(1f + 3 * 0x1p-11f)); // tie -> even (up)
        assertEquals((short) 0x3C01, h(1f + 0x1p-11f + 0x1p-20f));
        assertEquals((short) 0x3C00, h(1f + 0x1p-11f - 0x1p-20f));
        // overflow threshold: 65520 is the tie between 65504 and 2^16 (inf) -> even -> inf
        assertEquals((short) 0x7BFF, h(65519.996f));
        assertEquals((short) 0x7C00, h(65520f));
        assertEquals((short) 0xFC00, h(-65520f));
        assertEquals((short) 0x7C00, h(1e10f));
    }

    @Test
    void f16Subnormals() {
        assertEquals((short) 0x0001, h(0x1p-24f)); // smallest subnormal
        assertEquals(0x1p-24f, DType.f16ToFloat((short) 0x0001));
        assertEquals((short) 0x0000, h(0x1p-25f)); // tie between 0 and 1 -> 0
        assertEquals((short) 0x0001, h(0x1p-25f + 0x1p-40f)); // just above the tie
        assertEquals((short) 0x0002, h(3 * 0x1p-25f)); // tie between 1 and 2 -> 2
        assertEquals((short) 0x8001, h(-0x1p-24f));
        assertEquals((short) 0x03FF, h(1023 * 0x1p-24f)); // largest subnormal
        assertEquals((short) 0x0400, h(1023.5f * 0x1p-24f)); // tie rounds up into the smallest normal
        assertEquals((short) 0x0000, h(Float.MIN_VALUE));
        assertEquals((short) 0x8000, h(-Float.MIN_VALUE));
    }

    @Test
    void f16InfNaN() {
        assertEquals((short) 0x7C00, h(Float.POSITIVE_INFINITY));
        assertEquals((short) 0xFC00, h(Float.NEGATIVE_INFINITY));
        assertEquals(Float.POSITIVE_INFINITY, DType.f16ToFloat((short) 0x7C00));
        assertTrue(Float.isNaN(DType.f16ToFloat(h(Float.NaN))));
        assertTrue(Float.isNaN(DType.f16ToFloat(h(Float.intBitsToFloat(0x7F800001)))));
        assertEquals((short) 0xFE00, h(Float.intBitsToFloat(0xFFC00000)));
        assertTrue(Float.isNaN(DType.f16ToFloat((short) 0x7C01)));
    }

    @Test
    void f16EveryNonNaNPatternRoundTrips() {
        for (int b = 0; b < 0x10000; b++) {
            float f = DType.f16ToFloat((short) b);
            if (Float.isNaN(f)) {
                continue;
            }
            assertEquals((short) b, h(f), "f16 0x" + Integer.toHexString(b));
        }
    }

    /** Random floats: the result is the nearest f16, ties to even (checked in double arithmetic). */
    @Test
    void f16IsNearestOnRandomInputs() {
        SplittableRandom r = new SplittableRandom(42);
        for (int k = 0; k < 50_000; k++) {
            float f = Float.intBitsToFloat(r.nextInt(0x00000000, 0x477FF000 + 0x2000)) * (r.nextBoolean() ? 1 : -1);
            short got = h(f);
            float g = DType.f16ToFloat(got);
            if (Float.isInfinite(g)) {
                assertTrue(Math.abs(f) >= 65520f, "f=" + f);
                continue;
            }
            double err = Math.abs((double) f - g);
            // neighbours of the result
            for (int d = -1; d <= 1; d += 2) {
                int nb = (got & 0x7FFF) + d;
                if (nb < 0 || nb > 0x7BFF) {
                    continue;
                }
                float n = DType.f16ToFloat((short) ((got & 0x8000) | nb));
                double nerr = Math.abs((double) f - n);
                assertTrue(err < nerr || (err == nerr && (got & 1) == 0),
                        "f=" + f + " got 0x" + Integer.toHexString(got & 0xFFFF));
            }
        }
    }

    @Test
    void bf16IsNearestOnRandomInputs() {
        SplittableRandom r = new SplittableRandom(7);
        for (int k = 0; k < 50_000; k++) {
            float f = Float.intBitsToFloat(r.nextInt(0, 0x7F7F8000)) * (r.nextBoolean() ? 1 : -1);
            short got = bf(f);
            float g = DType.bf16ToFloat(got);
            double err = Math.abs((double) f - g);
            for (int d = -1; d <= 1; d += 2) {
                int nb = (got & 0x7FFF) + d;
                if (nb < 0 || nb > 0x7F7F) {
                    continue;
                }
                float n = DType.bf16ToFloat((short) ((got & 0x8000) | nb));
                double nerr = Math.abs((double) f - n);
                assertTrue(err < nerr || (err == nerr && (got & 1) == 0),
                        "f=" + f + " got 0x" + Integer.toHexString(got & 0xFFFF));
            }
        }
    }
}

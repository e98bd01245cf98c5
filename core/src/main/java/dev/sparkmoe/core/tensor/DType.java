package dev.sparkmoe.core.tensor;

import java.util.Locale;

/**
 * Element types. F32 is the compute type of the CPU backend; BF16 and F16 are storage / interchange types that are
 * widened to F32 on load; I32 and I64 hold token ids and indices.
 */
public enum DType {
    F32("F32", 4, true),
    BF16("BF16", 2, true),
    F16("F16", 2, true),
    I32("I32", 4, false),
    I64("I64", 8, false);

    private final String safetensorsName;
    private final int byteSize;
    private final boolean floating;

    DType(String safetensorsName, int byteSize, boolean floating) {
        this.safetensorsName = safetensorsName;
        this.byteSize = byteSize;
        this.floating = floating;
    }

    /** The dtype string used in safetensors headers ("F32", "BF16", ...). */
    public String safetensorsName() {
        return safetensorsName;
    }

    public int byteSize() {
        return byteSize;
    }

    public boolean isFloating() {
        return floating;
    }

    /** Parses a safetensors dtype name; returns null when it is not one we know. */
    public static DType fromSafetensorsName(String name) {
        for (DType d : values()) {
            if (d.safetensorsName.equals(name)) {
                return d;
            }
        }
        return null;
    }

    /** Parses a user-facing name such as "bf16", "float32", "f32". */
    public static DType parse(String name) {
        String n = name.trim().toLowerCase(Locale.ROOT);
        switch (n) {
            case "f32": case "fp32": case "float32": case "float": return F32;
            case "bf16": case "bfloat16": return BF16;
            case "f16": case "fp16": case "float16": case "half": return F16;
            case "i32": case "int32": return I32;
            case "i64": case "int64": case "long": return I64;
            default:
                throw new IllegalArgumentException("unknown dtype '" + name + "'; expected one of f32, bf16, f16, i32, i64");
        }
    }

    // ---- conversions (round-to-nearest-even, as torch does) ----

    public static float bf16ToFloat(short bits) {
        return Float.intBitsToFloat((bits & 0xFFFF) << 16);
    }

    public static short floatToBf16(float f) {
        int bits = Float.floatToRawIntBits(f);
        if ((bits & 0x7F800000) == 0x7F800000 && (bits & 0x007FFFFF) != 0) {
            return (short) ((bits >>> 16) | 0x0040); // quiet NaN, keep sign
        }
        int lsb = (bits >>> 16) & 1;
        int rounded = bits + 0x7FFF + lsb;
        return (short) (rounded >>> 16);
    }

    /** Rounds an f32 value to the nearest bf16 value (still returned as f32). */
    public static float roundToBf16(float f) {
        return bf16ToFloat(floatToBf16(f));
    }

    /** An f32 value as a tensor of floating dtype {@code d} holds it: rounded to nearest even for BF16 and F16. */
    public static float round(DType d, float f) {
        switch (d) {
            case BF16: return roundToBf16(f);
            case F16: return f16ToFloat(floatToF16(f));
            case F32: return f;
            default: throw new IllegalArgumentException(d + " is not a floating dtype");
        }
    }

    public static float f16ToFloat(short h) {
        int bits = h & 0xFFFF;
        int sign = (bits & 0x8000) << 16;
        int exp = (bits >>> 10) & 0x1F;
        int mant = bits & 0x3FF;
        if (exp == 0x1F) {
            return Float.intBitsToFloat(sign | 0x7F800000 | (mant << 13));
        }
        if (exp == 0) {
            if (mant == 0) {
                return Float.intBitsToFloat(sign);
            }
            float v = mant * 0x1p-24f; // subnormal: mant * 2^-24
            return sign != 0 ? -v : v;
        }
        return Float.intBitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
    }

    public static short floatToF16(float f) {
        int bits = Float.floatToRawIntBits(f);
        int sign = (bits >>> 16) & 0x8000;
        int abs = bits & 0x7FFFFFFF;
        if (abs >= 0x7F800000) { // inf or NaN
            return (short) (sign | 0x7C00 | (abs > 0x7F800000 ? 0x200 : 0));
        }
        if (abs >= 0x477FF000) { // rounds to >= 65520: overflow to inf
            return (short) (sign | 0x7C00);
        }
        if (abs < 0x38800000) { // below the smallest normal f16: subnormal or zero
            float a = Float.intBitsToFloat(abs);
            int m = Math.round(a * 0x1p24f); // Math.round is half-up; fix ties to even below
            float exact = a * 0x1p24f;
            if (exact - Math.floor(exact) == 0.5 && (m & 1) == 1) {
                m -= 1;
            }
            return (short) (sign | m);
        }
        int exp = ((abs >>> 23) - 112) << 10;
        int mant = abs & 0x7FFFFF;
        int h = exp | (mant >>> 13);
        int rest = mant & 0x1FFF;
        if (rest > 0x1000 || (rest == 0x1000 && (h & 1) == 1)) {
            h += 1;
        }
        return (short) (sign | h);
    }
}

package dev.sparkmoe.core.io;

import dev.sparkmoe.core.tensor.DType;
import java.io.Serializable;
import java.util.Locale;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * How a model is saved in Hugging Face layout: the dtype of its tensors and the largest file (transformers'
 * {@code max_shard_size}).
 *
 * @param dtype         F32, BF16 or F16
 * @param maxShardBytes bytes a file may hold before the next tensor goes to a new one (a larger tensor gets a file of
 *                      its own)
 */
public record ModelFormat(DType dtype, long maxShardBytes) implements Serializable {
    /** bf16 as the Hub's Qwen3-MoE checkpoints, files of at most 5 GB as transformers' default. */
    public static final ModelFormat DEFAULT = new ModelFormat(DType.BF16, 5_000_000_000L);

    private static final Pattern SIZE = Pattern.compile("(\\d+(?:\\.\\d+)?)\\s*([kmgt]i?b|b)?");

    public ModelFormat {
        if (dtype == null || !dtype.isFloating()) {
            throw new IllegalArgumentException("a model is saved as f32, bf16 or f16, not " + dtype);
        }
        if (maxShardBytes <= 0) {
            throw new IllegalArgumentException("the maximum shard size must be positive, got " + maxShardBytes
                    + " bytes");
        }
    }

    /**
     * Parses a size as transformers' {@code max_shard_size} does: a number of bytes, or a number with a unit, KB, MB,
     * GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), in any case: "5GB", "500MB", "2GiB".
     */
    public static long parseSize(String text) {
        Matcher m = SIZE.matcher(text == null ? "" : text.trim().toLowerCase(Locale.ROOT));
        if (!m.matches()) {
            throw new IllegalArgumentException("'" + text + "' is not a size; write bytes or a number with a unit, "
                    + "e.g. 5GB, 500MB, 2GiB");
        }
        double value = Double.parseDouble(m.group(1));
        String unit = m.group(2) == null ? "b" : m.group(2);
        double scale = switch (unit) {
            case "b" -> 1;
            case "kb" -> 1e3;
            case "mb" -> 1e6;
            case "gb" -> 1e9;
            case "tb" -> 1e12;
            case "kib" -> 1L << 10;
            case "mib" -> 1L << 20;
            case "gib" -> 1L << 30;
            default -> 1L << 40; // tib
        };
        double bytes = value * scale;
        if (bytes < 1 || bytes > Long.MAX_VALUE || bytes != Math.floor(bytes)) {
            throw new IllegalArgumentException("'" + text + "' is not a whole, positive number of bytes");
        }
        return (long) bytes;
    }
}

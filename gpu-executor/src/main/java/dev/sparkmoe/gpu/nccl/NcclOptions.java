package dev.sparkmoe.gpu.nccl;

import java.time.Duration;
import java.util.Map;
import java.util.Objects;

/**
 * Settings of an NCCL world: the CUDA device of this rank, the group's name, how long a collective may take before
 * the communicator is aborted (the watchdog's bound, also for a collective the host is blocked enqueueing) and how
 * long the (non-blocking) initialisation and splits may take.
 */
public record NcclOptions(int device, String name, Duration timeout, Duration initTimeout) {

    /** Environment variable of the collective timeout in milliseconds (shared with the TCP communicator). */
    public static final String ENV_TIMEOUT_MS = "SPARK_MOE_COLLECTIVE_TIMEOUT_MS";
    /** Environment variable of the initialisation timeout in milliseconds (shared with the TCP bootstrap). */
    public static final String ENV_INIT_TIMEOUT_MS = "SPARK_MOE_CONNECT_TIMEOUT_MS";

    public NcclOptions {
        if (device < 0) {
            throw new IllegalArgumentException("CUDA device (" + device + ") must be >= 0");
        }
        Objects.requireNonNull(name, "name");
        for (Duration d : new Duration[] {timeout, initTimeout}) {
            if (d == null || d.isZero() || d.isNegative()) {
                throw new IllegalArgumentException("timeouts must be positive: timeout=" + timeout + ", initTimeout="
                        + initTimeout);
            }
        }
    }

    /** Device {@code device}, name "world", 300 s per collective, 120 s to initialise. */
    public static NcclOptions defaults(int device) {
        return new NcclOptions(device, "world", Duration.ofSeconds(300), Duration.ofSeconds(120));
    }

    /** {@link #defaults(int)} with the timeouts of {@link #ENV_TIMEOUT_MS} and {@link #ENV_INIT_TIMEOUT_MS} if set. */
    public static NcclOptions fromEnvironment(Map<String, String> env, int device) {
        NcclOptions d = defaults(device);
        return new NcclOptions(device, d.name(), ms(env, ENV_TIMEOUT_MS, d.timeout()), ms(env, ENV_INIT_TIMEOUT_MS,
                d.initTimeout()));
    }

    private static Duration ms(Map<String, String> env, String var, Duration dflt) {
        String v = env.get(var);
        if (v == null || v.isBlank()) {
            return dflt;
        }
        try {
            return Duration.ofMillis(Long.parseLong(v.strip()));
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(var + "='" + v + "' is not a number of milliseconds");
        }
    }

    public NcclOptions withName(String n) {
        return new NcclOptions(device, n, timeout, initTimeout);
    }

    public NcclOptions withTimeout(Duration t) {
        return new NcclOptions(device, name, t, initTimeout);
    }

    public NcclOptions withInitTimeout(Duration t) {
        return new NcclOptions(device, name, timeout, t);
    }
}

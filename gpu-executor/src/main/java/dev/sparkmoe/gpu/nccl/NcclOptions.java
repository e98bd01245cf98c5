package dev.sparkmoe.gpu.nccl;

import java.time.Duration;
import java.util.Map;
import java.util.Objects;

/**
 * Settings of an NCCL world: the CUDA device of this rank, the group's name, how long a collective may take before
 * the communicator is aborted, how long the (non-blocking) initialisation may take, and whether collectives run on a
 * blocking communicator.
 *
 * <p>{@code blockingCollectives} (the default): initialisation and splits always run non-blocking, polled against
 * {@code initTimeout}; the collectives then run on a blocking twin of each communicator (made by {@code ncclCommSplit}
 * with {@code blocking = 1}), as {@code torch.distributed} runs them. On a non-blocking communicator every
 * {@code ncclGroupEnd} hands its work to a helper thread of NCCL's and answers {@code ncclInProgress}, to be polled:
 * hundreds of microseconds of host time per collective (measured: 2 x H200, an FSDP training step 5-7% faster
 * with blocking collectives). Hangs are still bounded: the watchdog aborts a collective the host is blocked
 * enqueueing, as it aborts one the device runs, once it passes {@code timeout}. Off
 * ({@code -Dsparkmoe.nccl.blockingCollectives=false} or {@link #ENV_BLOCKING}{@code =0}): every call non-blocking.
 */
public record NcclOptions(int device, String name, Duration timeout, Duration initTimeout,
                          boolean blockingCollectives) {

    /** Environment variable of the collective timeout in milliseconds (shared with the TCP communicator). */
    public static final String ENV_TIMEOUT_MS = "SPARK_MOE_COLLECTIVE_TIMEOUT_MS";
    /** Environment variable of the initialisation timeout in milliseconds (shared with the TCP bootstrap). */
    public static final String ENV_INIT_TIMEOUT_MS = "SPARK_MOE_CONNECT_TIMEOUT_MS";
    /** Environment variable: {@code 0} runs the collectives on the non-blocking communicators too. */
    public static final String ENV_BLOCKING = "SPARK_MOE_NCCL_BLOCKING_COLLECTIVES";

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

    /**
     * Device {@code device}, name "world", 300 s per collective, 120 s to initialise, blocking collectives unless
     * {@code -Dsparkmoe.nccl.blockingCollectives=false}.
     */
    public static NcclOptions defaults(int device) {
        return new NcclOptions(device, "world", Duration.ofSeconds(300), Duration.ofSeconds(120),
                !"false".equals(System.getProperty("sparkmoe.nccl.blockingCollectives")));
    }

    /**
     * {@link #defaults(int)} with the timeouts of {@link #ENV_TIMEOUT_MS} and {@link #ENV_INIT_TIMEOUT_MS} and the
     * collectives' mode of {@link #ENV_BLOCKING} ({@code 0} or {@code 1}) where set.
     */
    public static NcclOptions fromEnvironment(Map<String, String> env, int device) {
        NcclOptions d = defaults(device);
        String b = env.get(ENV_BLOCKING);
        boolean blocking = d.blockingCollectives();
        if (b != null && !b.isBlank()) {
            String v = b.strip();
            if (!v.equals("0") && !v.equals("1")) {
                throw new IllegalArgumentException(ENV_BLOCKING + "='" + b + "' must be 0 (non-blocking collectives) or"
                        + " 1 (blocking, the default)");
            }
            blocking = v.equals("1");
        }
        return new NcclOptions(device, d.name(), ms(env, ENV_TIMEOUT_MS, d.timeout()), ms(env, ENV_INIT_TIMEOUT_MS,
                d.initTimeout()), blocking);
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
        return new NcclOptions(device, n, timeout, initTimeout, blockingCollectives);
    }

    public NcclOptions withTimeout(Duration t) {
        return new NcclOptions(device, name, t, initTimeout, blockingCollectives);
    }

    public NcclOptions withInitTimeout(Duration t) {
        return new NcclOptions(device, name, timeout, t, blockingCollectives);
    }

    public NcclOptions withBlockingCollectives(boolean b) {
        return new NcclOptions(device, name, timeout, initTimeout, b);
    }
}

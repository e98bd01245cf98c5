package dev.sparkmoe.gpu.comm;

import java.time.Duration;
import java.util.Map;
import java.util.Objects;

/**
 * Everything one rank needs to join a {@link TcpCommunicator} job: world size, its rank, rank 0's listening address,
 * timeouts and the job secret. Rank 0 listens on {@code rank0Host:rank0Port}; every other rank connects there,
 * proves it holds the secret, and learns the other ranks' listening addresses.
 *
 * <p>{@link #toString()} never shows the secret.
 */
public final class TcpRendezvous {

    /** Environment variables read by {@link #fromEnvironment(Map)} (the secret: see {@link JobSecret#ENV}). */
    public static final String ENV_WORLD_SIZE = "SPARK_MOE_WORLD_SIZE";
    public static final String ENV_RANK = "SPARK_MOE_RANK";
    /** {@code host:port} of rank 0. */
    public static final String ENV_MASTER = "SPARK_MOE_MASTER_ADDR";
    /** Host this rank listens on (and advertises); optional. */
    public static final String ENV_LISTEN_HOST = "SPARK_MOE_LISTEN_HOST";
    public static final String ENV_CONNECT_TIMEOUT_MS = "SPARK_MOE_CONNECT_TIMEOUT_MS";
    public static final String ENV_COLLECTIVE_TIMEOUT_MS = "SPARK_MOE_COLLECTIVE_TIMEOUT_MS";
    public static final String ENV_HANDSHAKE_TIMEOUT_MS = "SPARK_MOE_HANDSHAKE_TIMEOUT_MS";

    private final int worldSize;
    private final int rank;
    private final String rank0Host;
    private final int rank0Port;
    private final String listenHost;
    private final Duration connectTimeout;
    private final Duration collectiveTimeout;
    private final Duration handshakeTimeout;
    private final JobSecret secret;
    private final String name;

    private TcpRendezvous(Builder b) {
        this.worldSize = b.worldSize;
        this.rank = b.rank;
        this.rank0Host = b.rank0Host;
        this.rank0Port = b.rank0Port;
        this.listenHost = b.listenHost;
        this.connectTimeout = b.connectTimeout;
        this.collectiveTimeout = b.collectiveTimeout;
        this.handshakeTimeout = b.handshakeTimeout;
        this.secret = b.secret;
        this.name = b.name;
    }

    public static Builder builder() {
        return new Builder();
    }

    /**
     * Reads {@link #ENV_WORLD_SIZE}, {@link #ENV_RANK}, {@link #ENV_MASTER} (required), the optional listen host and
     * timeouts (milliseconds), and the secret ({@link JobSecret#fromEnvironment(Map)}).
     */
    public static TcpRendezvous fromEnvironment(Map<String, String> env) {
        Builder b = builder()
                .worldSize(intVar(env, ENV_WORLD_SIZE, null))
                .rank(intVar(env, ENV_RANK, null))
                .secret(JobSecret.fromEnvironment(env));
        String master = env.get(ENV_MASTER);
        if (master == null || master.isBlank()) {
            throw new IllegalStateException(ENV_MASTER + " is not set; hint: host:port of rank 0");
        }
        int colon = master.lastIndexOf(':');
        if (colon <= 0 || colon == master.length() - 1) {
            throw new IllegalArgumentException(ENV_MASTER + "='" + master + "' is not host:port");
        }
        b.rank0(master.substring(0, colon), Integer.parseInt(master.substring(colon + 1).strip()));
        if (env.get(ENV_LISTEN_HOST) != null && !env.get(ENV_LISTEN_HOST).isBlank()) {
            b.listenHost(env.get(ENV_LISTEN_HOST).strip());
        }
        b.connectTimeout(Duration.ofMillis(intVar(env, ENV_CONNECT_TIMEOUT_MS, (int) b.connectTimeout.toMillis())));
        b.collectiveTimeout(Duration.ofMillis(intVar(env, ENV_COLLECTIVE_TIMEOUT_MS, (int) b.collectiveTimeout.toMillis())));
        b.handshakeTimeout(Duration.ofMillis(intVar(env, ENV_HANDSHAKE_TIMEOUT_MS, (int) b.handshakeTimeout.toMillis())));
        return b.build();
    }

    /** {@link #fromEnvironment(Map)} of this process. */
    public static TcpRendezvous fromEnvironment() {
        return fromEnvironment(System.getenv());
    }

    private static int intVar(Map<String, String> env, String var, Integer dflt) {
        String v = env.get(var);
        if (v == null || v.isBlank()) {
            if (dflt == null) {
                throw new IllegalStateException(var + " is not set");
            }
            return dflt;
        }
        try {
            return Integer.parseInt(v.strip());
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(var + "='" + v + "' is not an integer");
        }
    }

    public int worldSize() {
        return worldSize;
    }

    public int rank() {
        return rank;
    }

    public String rank0Host() {
        return rank0Host;
    }

    public int rank0Port() {
        return rank0Port;
    }

    /** Host to bind this rank's listener to (rank 0 uses {@link #rank0Host()}); null: the local address that reaches rank 0. */
    public String listenHost() {
        return listenHost;
    }

    /** Time allowed for the whole bootstrap (connecting, every rank joining, the mesh). */
    public Duration connectTimeout() {
        return connectTimeout;
    }

    /** Time a collective waits for a peer before failing with a {@link dev.sparkmoe.parallel.comm.CollectiveTimeoutException}. */
    public Duration collectiveTimeout() {
        return collectiveTimeout;
    }

    /** Time an accepted connection has to authenticate before it is closed. */
    public Duration handshakeTimeout() {
        return handshakeTimeout;
    }

    JobSecret secret() {
        return secret;
    }

    /** Name of the world group in logs and errors. */
    public String name() {
        return name;
    }

    @Override
    public String toString() {
        return "TcpRendezvous[world=" + worldSize + ", rank=" + rank + ", rank0=" + rank0Host + ":" + rank0Port
                + ", listenHost=" + listenHost + ", connectTimeout=" + connectTimeout.toMillis() + "ms, collectiveTimeout="
                + collectiveTimeout.toMillis() + "ms, handshakeTimeout=" + handshakeTimeout.toMillis() + "ms, secret="
                + secret + ", name=" + name + "]";
    }

    /** Builder; world size, rank, rank 0's address and the secret are required. */
    public static final class Builder {
        private int worldSize = -1;
        private int rank = -1;
        private String rank0Host;
        private int rank0Port = -1;
        private String listenHost;
        private Duration connectTimeout = Duration.ofSeconds(60);
        private Duration collectiveTimeout = Duration.ofSeconds(300);
        private Duration handshakeTimeout = Duration.ofSeconds(5);
        private JobSecret secret;
        private String name = "world";

        private Builder() {
        }

        public Builder worldSize(int n) {
            this.worldSize = n;
            return this;
        }

        public Builder rank(int r) {
            this.rank = r;
            return this;
        }

        public Builder rank0(String host, int port) {
            this.rank0Host = host;
            this.rank0Port = port;
            return this;
        }

        public Builder listenHost(String host) {
            this.listenHost = host;
            return this;
        }

        public Builder connectTimeout(Duration d) {
            this.connectTimeout = d;
            return this;
        }

        public Builder collectiveTimeout(Duration d) {
            this.collectiveTimeout = d;
            return this;
        }

        public Builder handshakeTimeout(Duration d) {
            this.handshakeTimeout = d;
            return this;
        }

        public Builder secret(JobSecret s) {
            this.secret = s;
            return this;
        }

        public Builder name(String n) {
            this.name = n;
            return this;
        }

        public TcpRendezvous build() {
            if (worldSize < 1) {
                throw new IllegalArgumentException("worldSize (" + worldSize + ") must be >= 1");
            }
            if (rank < 0 || rank >= worldSize) {
                throw new IllegalArgumentException("rank (" + rank + ") must be in [0, worldSize=" + worldSize + ")");
            }
            if (worldSize > 1 && (rank0Host == null || rank0Port < 0 || rank0Port > 65535 || (rank != 0 && rank0Port == 0))) {
                throw new IllegalArgumentException("rank 0 address (" + rank0Host + ":" + rank0Port
                        + ") must be host:port with 1 <= port <= 65535");
            }
            Objects.requireNonNull(secret, "secret (hint: JobSecret.generate() in the launcher, JobSecret.fromEnvironment() in ranks)");
            for (Duration d : new Duration[] {connectTimeout, collectiveTimeout, handshakeTimeout}) {
                if (d == null || d.isNegative() || d.isZero()) {
                    throw new IllegalArgumentException("timeouts must be positive: connect=" + connectTimeout
                            + ", collective=" + collectiveTimeout + ", handshake=" + handshakeTimeout);
                }
            }
            Objects.requireNonNull(name, "name");
            return new TcpRendezvous(this);
        }
    }
}

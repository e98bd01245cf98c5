package dev.sparkmoe.gpu.launch;

import dev.sparkmoe.gpu.comm.TcpCommunicator;
import dev.sparkmoe.gpu.comm.TcpRendezvous;
import dev.sparkmoe.gpu.nccl.Nccl;
import dev.sparkmoe.gpu.nccl.NcclBootstrap;
import dev.sparkmoe.gpu.nccl.NcclCommunicator;
import dev.sparkmoe.gpu.nccl.NcclOptions;
import java.nio.charset.StandardCharsets;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;

/**
 * One rank of a job: reads its place from the environment ({@link TcpRendezvous#fromEnvironment(Map)} plus the
 * variables below), joins the host world over TCP, chooses the backend (logged; all ranks must agree), creates the
 * NCCL world on its GPU when the backend is cuda, runs the {@link RankEntry} and exits with its code (1 on an
 * exception, after printing it).
 *
 * <p>Environment (set by {@link Launcher}): {@code SPARK_MOE_WORLD_SIZE}, {@code SPARK_MOE_RANK},
 * {@code SPARK_MOE_MASTER_ADDR}, the job secret ({@code SPARK_MOE_JOB_SECRET_FILE} or {@code SPARK_MOE_JOB_SECRET}),
 * {@link #ENV_ENTRY}, {@link #ENV_BACKEND}, {@link #ENV_LOCAL_RANK}, {@link #ENV_DEVICE}; timeouts as
 * {@link TcpRendezvous}. Arguments: the training arguments, handed to the entry unchanged.
 */
public final class RankMain {

    /** Class name of the {@link RankEntry}; default {@link CollectiveSmokeEntry}. */
    public static final String ENV_ENTRY = "SPARK_MOE_ENTRY";
    /** {@code auto} (default: cuda when NCCL and a GPU are usable, else cpu), {@code cpu} or {@code cuda}. */
    public static final String ENV_BACKEND = "SPARK_MOE_BACKEND";
    /** Rank on this host. */
    public static final String ENV_LOCAL_RANK = "SPARK_MOE_LOCAL_RANK";
    /** CUDA device ordinal of this rank; default the local rank. */
    public static final String ENV_DEVICE = "SPARK_MOE_DEVICE";

    public static final String DEFAULT_ENTRY = CollectiveSmokeEntry.class.getName();

    private RankMain() {
    }

    public static void main(String[] args) {
        int code = 1;
        try {
            code = run(System.getenv(), args);
        } catch (Throwable t) {
            System.err.println("spark-moe rank " + System.getenv(TcpRendezvous.ENV_RANK) + " failed: " + t);
            t.printStackTrace();
        }
        System.out.flush();
        System.err.flush();
        Runtime.getRuntime().halt(code); // no stray non-daemon thread may keep a finished rank alive
    }

    /** Runs one rank as described above and returns its exit code; throws on setup errors. */
    public static int run(Map<String, String> env, String[] args) throws Exception {
        RankEntry entry = loadEntry(env.getOrDefault(ENV_ENTRY, DEFAULT_ENTRY).strip());
        TcpRendezvous rv = TcpRendezvous.fromEnvironment(env);
        int localRank = intVar(env, ENV_LOCAL_RANK, rv.rank());
        String wanted = env.getOrDefault(ENV_BACKEND, "auto").strip().toLowerCase(Locale.ROOT);
        String backend;
        String why;
        switch (wanted) {
            case "cpu" -> {
                backend = "cpu";
                why = "set explicitly";
            }
            case "cuda" -> {
                Nccl.Availability a = Nccl.probe();
                if (!a.ok()) {
                    throw new IllegalStateException("backend cuda was requested but " + a.reason());
                }
                backend = "cuda";
                why = "set explicitly; " + a.describe();
            }
            case "auto" -> {
                Nccl.Availability a = Nccl.probe();
                backend = a.ok() ? "cuda" : "cpu";
                why = "auto: " + a.describe();
            }
            default -> throw new IllegalArgumentException(ENV_BACKEND + "='" + wanted
                    + "' is not one of auto, cpu, cuda");
        }
        int device = "cuda".equals(backend) ? intVar(env, ENV_DEVICE, localRank) : -1;
        System.err.println("[spark-moe] rank " + rv.rank() + "/" + rv.worldSize() + ": backend=" + backend + " (" + why
                + ")" + (device >= 0 ? ", device " + device : ""));
        try (TcpCommunicator host = TcpCommunicator.connect(rv)) {
            agreeOnBackend(host, backend);
            NcclCommunicator nccl = null;
            try {
                if ("cuda".equals(backend)) {
                    nccl = NcclCommunicator.create(NcclBootstrap.over(host), NcclOptions.fromEnvironment(env, device));
                }
                RankContext ctx = new RankContext(rv.rank(), rv.worldSize(), localRank, backend, device, host,
                        Optional.ofNullable(nccl));
                return entry.run(ctx, args);
            } finally {
                if (nccl != null) {
                    nccl.close();
                }
            }
        }
    }

    private static void agreeOnBackend(TcpCommunicator host, String backend) {
        byte[][] all = host.allGatherBytes(backend.getBytes(StandardCharsets.UTF_8));
        StringBuilder s = new StringBuilder();
        boolean same = true;
        for (int r = 0; r < all.length; r++) {
            String b = new String(all[r], StandardCharsets.UTF_8);
            same &= b.equals(backend);
            s.append(r == 0 ? "" : ", ").append("rank ").append(r).append('=').append(b);
        }
        if (!same) {
            throw new IllegalStateException("ranks chose different backends (" + s + "); hint: set --backend "
                    + "explicitly, and make every rank see CUDA and libnccl alike");
        }
    }

    static RankEntry loadEntry(String className) {
        Class<?> c;
        try {
            c = Class.forName(className);
        } catch (ClassNotFoundException e) {
            throw new IllegalArgumentException("entry class " + className + " is not on the class path; hint: --entry "
                    + "takes a fully qualified class name implementing " + RankEntry.class.getName());
        }
        if (!RankEntry.class.isAssignableFrom(c)) {
            throw new IllegalArgumentException("entry class " + className + " does not implement "
                    + RankEntry.class.getName());
        }
        try {
            return (RankEntry) c.getDeclaredConstructor().newInstance();
        } catch (ReflectiveOperationException e) {
            throw new IllegalArgumentException("entry class " + className + " needs a public no-argument constructor ("
                    + e + ")");
        }
    }

    private static int intVar(Map<String, String> env, String var, int dflt) {
        String v = env.get(var);
        if (v == null || v.isBlank()) {
            return dflt;
        }
        try {
            return Integer.parseInt(v.strip());
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(var + "='" + v + "' is not an integer");
        }
    }
}

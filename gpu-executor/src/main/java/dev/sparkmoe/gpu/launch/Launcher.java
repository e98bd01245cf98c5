package dev.sparkmoe.gpu.launch;

import dev.sparkmoe.gpu.comm.JobSecret;
import dev.sparkmoe.gpu.comm.TcpRendezvous;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.io.UncheckedIOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.Callable;
import java.util.concurrent.TimeUnit;
import dev.sparkmoe.parallel.tools.Cli;
import picocli.CommandLine;

/**
 * {@code spark-moe launch}: starts N rank processes on this host, one per GPU (the {@code torchrun} equivalent), and
 * supervises them.
 *
 * <pre>
 * spark-moe launch --nproc N [--master-port P] [--master-addr HOST] [--entry CLASS] [--backend auto|cpu|cuda]
 *                  [--devices 0,1,...] [--jvm-opt OPT]... [--grace-seconds S] [--] [training args...]
 * </pre>
 *
 * <ul>
 *   <li>Each rank is a JVM running {@link RankMain} with this JVM's class path and {@code java}; rank, world size,
 *       rank 0's address, device and entry travel in the {@code SPARK_MOE_*} environment
 *       ({@link TcpRendezvous#fromEnvironment(Map)}), the job secret in a fresh 0600 file named by
 *       {@code SPARK_MOE_JOB_SECRET_FILE} (never on a command line), deleted when the job ends.</li>
 *   <li>Rank r uses CUDA device r (or the r-th of {@code --devices}); every GPU stays visible to every rank, as NCCL
 *       prefers.</li>
 *   <li>The children's environment has {@code NCCL_NVLS_ENABLE=0} (and the PyTorch/NVSHMEM multicast switches off):
 *       NVLink SHARP multicast can take a shared host's GPUs out of service.</li>
 *   <li>Output is forwarded line by line with a {@code [rank r]} prefix.</li>
 *   <li>Fail fast: when a rank exits non-zero the others are stopped (SIGTERM, then SIGKILL after the grace period)
 *       and the launcher exits with that rank's code, naming the rank.</li>
 * </ul>
 * Exit codes: 0 all ranks succeeded; 2 usage error; otherwise the first failing rank's code (1 if it had none).
 */
public final class Launcher {

    /** The parsed command line. */
    record Options(int nproc, int masterPort, String masterAddr, String entry, String backend, int[] devices,
                   List<String> jvmOpts, int graceSeconds, List<String> trainingArgs) {
    }

    /** Backends a rank can be asked for. */
    enum Backend { auto, cpu, cuda }

    /** {@code spark-moe launch}'s command line. */
    @CommandLine.Command(name = "launch", sortOptions = false, usageHelpAutoWidth = true,
            mixinStandardHelpOptions = true,
            description = {"Start N rank processes on this host, one per GPU, without Spark (the torchrun "
                    + "equivalent); the first argument that is not an option, or everything after --, goes to the "
                    + "entry of every rank."})
    public static final class Command implements Callable<Integer> {
        private final PrintStream out;
        private final PrintStream err;

        @CommandLine.Option(names = "--nproc", paramLabel = "N",
                description = "number of rank processes on this host (one per GPU), N >= 1; required")
        int nproc = -1;

        /** torchrun's names for --nproc. */
        @CommandLine.Option(names = {"--nproc-per-node", "--nproc_per_node"}, paramLabel = "N", hidden = true)
        void nprocPerNode(int n) {
            nproc = n;
        }

        @CommandLine.Option(names = "--master-port", paramLabel = "P", defaultValue = "0",
                description = "TCP port of rank 0 (default: a free port)")
        int masterPort;

        @CommandLine.Option(names = "--master-addr", paramLabel = "HOST", defaultValue = "127.0.0.1",
                description = "address rank 0 listens on (default ${DEFAULT-VALUE})")
        String masterAddr;

        @CommandLine.Option(names = "--entry", paramLabel = "CLASS",
                description = "RankEntry to run (default: the NCCL smoke test, ${DEFAULT-VALUE})")
        String entry = RankMain.DEFAULT_ENTRY;

        @CommandLine.Option(names = "--backend", paramLabel = "B", defaultValue = "auto",
                description = "auto (default), cpu or cuda")
        Backend backend;

        @CommandLine.Option(names = "--devices", paramLabel = "LIST", split = ",",
                description = "CUDA device of each rank, comma-separated (default 0..N-1)")
        int[] devices;

        @CommandLine.Option(names = "--jvm-opt", paramLabel = "OPT",
                description = "extra JVM option for every rank (repeatable), e.g. --jvm-opt -Xmx16g")
        List<String> jvmOpts = new ArrayList<>();

        @CommandLine.Option(names = "--grace-seconds", paramLabel = "S", defaultValue = "10",
                description = "after a rank fails, time the others get to stop before SIGKILL (default "
                        + "${DEFAULT-VALUE})")
        int graceSeconds;

        @CommandLine.Parameters(paramLabel = "ARGS", description = "arguments of every rank's entry")
        List<String> trainingArgs = new ArrayList<>();

        public Command(PrintStream out, PrintStream err) {
            this.out = out;
            this.err = err;
        }

        Options options() {
            if (nproc == -1) {
                throw new Cli.UsageException("--nproc is required: the number of rank processes, one per GPU");
            }
            if (nproc < 1) {
                throw new Cli.UsageException("--nproc must be >= 1, got " + nproc);
            }
            if (masterPort < 0 || masterPort > 65535) {
                throw new Cli.UsageException("--master-port must be in [1, 65535], got " + masterPort);
            }
            if (devices != null && devices.length != nproc) {
                throw new Cli.UsageException("--devices lists " + devices.length + " devices "
                        + Arrays.toString(devices) + " but --nproc is " + nproc);
            }
            if (graceSeconds < 0) {
                throw new Cli.UsageException("--grace-seconds must be >= 0, got " + graceSeconds);
            }
            for (String j : jvmOpts) {
                if (j.contains(JobSecret.ENV)) {
                    throw new Cli.UsageException("--jvm-opt must not carry the job secret");
                }
            }
            return new Options(nproc, masterPort, masterAddr, entry, backend.name(), devices, List.copyOf(jvmOpts),
                    graceSeconds, List.copyOf(trainingArgs));
        }

        @Override
        public Integer call() throws IOException {
            return launch(options(), out, err);
        }
    }

    private Launcher() {
    }

    public static void main(String[] args) {
        Cli.exit(run(args, System.out, System.err));
    }

    /** Runs the launcher (arguments without the leading {@code launch}); returns its exit code. */
    public static int run(String[] args, PrintStream out, PrintStream err) {
        return commandLine(out, err).execute(withoutCommandName(args));
    }

    /** The launcher's command line: everything from the first non-option argument on goes to the ranks. */
    public static CommandLine commandLine(PrintStream out, PrintStream err) {
        return Cli.of(new Command(out, err), out, err).setStopAtPositional(true);
    }

    /** Arguments as given after {@code spark-moe}: a leading {@code launch} is the command's name. */
    private static String[] withoutCommandName(String[] argv) {
        return argv.length > 0 && argv[0].equals("launch") ? Arrays.copyOfRange(argv, 1, argv.length) : argv;
    }

    static Options parse(String[] argv) {
        Command c = new Command(System.out, System.err);
        try {
            new CommandLine(c).setStopAtPositional(true).setCaseInsensitiveEnumValuesAllowed(true)
                    .parseArgs(withoutCommandName(argv));
        } catch (CommandLine.ParameterException e) {
            throw new Cli.UsageException(e.getMessage());
        }
        return c.options();
    }

    /** The command line of one rank: no secret, no rank-specific data (that travels in the environment). */
    static List<String> childCommand(Options o) {
        List<String> cmd = new ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        cmd.add("-Xss4m");
        boolean pathsFirst = false;
        for (String p : System.getProperties().stringPropertyNames()) {
            if (p.startsWith("org.bytedeco.") || p.startsWith("sparkmoe.")) { // JavaCPP and our own -D settings
                cmd.add("-D" + p + "=" + System.getProperty(p));
                pathsFirst |= p.equals("org.bytedeco.javacpp.pathsFirst");
            }
        }
        if (!pathsFirst) {
            cmd.add("-Dorg.bytedeco.javacpp.pathsFirst=true");
        }
        cmd.addAll(o.jvmOpts());
        cmd.add("-cp");
        cmd.add(System.getProperty("java.class.path"));
        cmd.add(RankMain.class.getName());
        cmd.addAll(o.trainingArgs());
        return cmd;
    }

    /** The environment of rank {@code r} on top of this process's. */
    static Map<String, String> childEnvironment(Options o, int r, int port, Path secretFile) {
        Map<String, String> env = new LinkedHashMap<>();
        env.put(TcpRendezvous.ENV_WORLD_SIZE, Integer.toString(o.nproc()));
        env.put(TcpRendezvous.ENV_RANK, Integer.toString(r));
        env.put(TcpRendezvous.ENV_MASTER, o.masterAddr() + ":" + port);
        env.put(TcpRendezvous.ENV_LISTEN_HOST, o.masterAddr());
        env.put(RankMain.ENV_LOCAL_RANK, Integer.toString(r));
        env.put(RankMain.ENV_DEVICE, Integer.toString(o.devices() == null ? r : o.devices()[r]));
        env.put(RankMain.ENV_ENTRY, o.entry());
        env.put(RankMain.ENV_BACKEND, o.backend());
        env.put(JobSecret.ENV_FILE, secretFile.toString());
        env.put("NCCL_NVLS_ENABLE", "0");
        env.put("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1");
        env.put("NVSHMEM_DISABLE_NVLS", "1");
        return env;
    }

    private static int launch(Options o, PrintStream out, PrintStream err) throws IOException {
        int port = o.masterPort() > 0 ? o.masterPort() : freePort(o.masterAddr());
        Path secretFile = JobSecret.generate().writeTempFile();
        List<Process> procs = new ArrayList<>();
        List<Thread> pumps = new ArrayList<>();
        BlockingQueue<Integer> exits = new LinkedBlockingQueue<>();
        // if the launcher itself is stopped (Ctrl-C, SIGTERM), its ranks go with it
        Thread hook = new Thread(() -> {
            synchronized (procs) {
                for (Process p : procs) {
                    p.descendants().forEach(ProcessHandle::destroyForcibly);
                    p.destroyForcibly();
                }
            }
        });
        Runtime.getRuntime().addShutdownHook(hook);
        try {
            err.println("spark-moe launch: " + o.nproc() + " ranks, entry " + o.entry() + ", backend " + o.backend()
                    + ", rank 0 at " + o.masterAddr() + ":" + port + ", NCCL_NVLS_ENABLE=0");
            List<String> cmd = childCommand(o);
            for (int r = 0; r < o.nproc(); r++) {
                ProcessBuilder pb = new ProcessBuilder(cmd);
                Map<String, String> env = pb.environment();
                env.remove(JobSecret.ENV);
                env.putAll(childEnvironment(o, r, port, secretFile));
                Process p;
                try {
                    p = pb.start();
                } catch (IOException e) {
                    stopAll(procs, o.graceSeconds(), err);
                    throw new IOException("cannot start rank " + r + " (" + cmd.get(0) + "): " + e.getMessage(), e);
                }
                synchronized (procs) {
                    procs.add(p);
                }
                int rank = r;
                pumps.add(pump(p.getInputStream(), out, "[rank " + r + "] "));
                pumps.add(pump(p.getErrorStream(), err, "[rank " + r + "] "));
                p.onExit().thenRun(() -> exits.add(rank));
            }
            int failedRank = -1;
            int failedCode = 0;
            int remaining = procs.size();
            while (remaining > 0) {
                int r = exits.take();
                remaining--;
                int code = procs.get(r).exitValue();
                if (code != 0 && failedRank < 0) {
                    failedRank = r;
                    failedCode = code;
                    List<Integer> others = new ArrayList<>();
                    for (int q = 0; q < procs.size(); q++) {
                        if (q != r && procs.get(q).isAlive()) {
                            others.add(q);
                        }
                    }
                    err.println("spark-moe launch: rank " + r + " exited with code " + code
                            + (others.isEmpty() ? "" : "; stopping ranks " + others));
                    stopAll(procs, o.graceSeconds(), err);
                }
            }
            for (Thread t : pumps) {
                t.join(5000);
            }
            if (failedRank >= 0) {
                err.println("spark-moe launch: FAILED: rank " + failedRank + " exited with code " + failedCode);
                return failedCode > 0 && failedCode < 256 ? failedCode : 1;
            }
            err.println("spark-moe launch: all " + o.nproc() + " ranks exited with code 0");
            return 0;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            stopAll(procs, 0, err);
            return 1;
        } finally {
            Files.deleteIfExists(secretFile);
            try {
                Runtime.getRuntime().removeShutdownHook(hook);
            } catch (IllegalStateException e) {
                // already shutting down: the hook runs
            }
        }
    }

    /** SIGTERM to every live rank, then SIGKILL to those still alive after {@code grace} seconds. */
    private static void stopAll(List<Process> procs, int grace, PrintStream err) {
        for (Process p : procs) {
            if (p.isAlive()) {
                p.destroy();
            }
        }
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(grace);
        for (int q = 0; q < procs.size(); q++) {
            Process p = procs.get(q);
            try {
                if (!p.waitFor(Math.max(0, deadline - System.nanoTime()), TimeUnit.NANOSECONDS)) {
                    err.println("spark-moe launch: rank " + q + " did not stop within " + grace + " s; killing it");
                    p.descendants().forEach(ProcessHandle::destroyForcibly);
                    p.destroyForcibly();
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                p.destroyForcibly();
            }
        }
    }

    private static Thread pump(InputStream in, PrintStream to, String prefix) {
        Thread t = new Thread(() -> {
            try (BufferedReader r = new BufferedReader(new InputStreamReader(in, StandardCharsets.UTF_8))) {
                String line;
                while ((line = r.readLine()) != null) {
                    synchronized (to) {
                        to.println(prefix + line);
                    }
                }
            } catch (IOException e) {
                // the rank went away; its exit code tells the story
            }
        }, "spark-moe-launch-pump " + prefix.strip());
        t.setDaemon(true);
        t.start();
        return t;
    }

    private static int freePort(String host) {
        try (ServerSocket s = new ServerSocket()) {
            s.setReuseAddress(true);
            s.bind(new InetSocketAddress(InetAddress.getByName(host), 0));
            return s.getLocalPort();
        } catch (IOException e) {
            throw new UncheckedIOException("cannot find a free port on " + host, e);
        }
    }
}

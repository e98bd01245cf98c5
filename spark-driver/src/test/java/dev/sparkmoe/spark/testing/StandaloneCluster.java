package dev.sparkmoe.spark.testing;

import java.io.IOException;
import java.net.ServerSocket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * A Spark standalone cluster of separate JVMs started from the test class path: one Master and N Workers, each
 * Worker offering {@code cores} cores; executors are the Workers' child JVMs. A test can kill an executor
 * ({@code kill -9}: the Worker starts another) or stop a Worker for good. Everything is killed on {@link #close()}.
 */
public final class StandaloneCluster implements AutoCloseable {
    private final Path home;
    private final String classPath = System.getProperty("java.class.path");
    private final String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
    private final int port;
    private final Process master;
    private final List<Process> workers = new ArrayList<>();

    /** Starts the Master and {@code workers} Workers and waits until they have registered. */
    public StandaloneCluster(Path dir, int workers, int cores, String memory) throws IOException,
            InterruptedException {
        this.home = Files.createDirectories(dir.resolve("spark-home"));
        Files.createDirectories(home.resolve("jars")); // the executors get the test class path instead
        Files.writeString(home.resolve("RELEASE"), "spark-moe test cluster\n"); // look for jars in jars/
        // the Master and Workers log what they do (the test's own logging configuration keeps Spark quiet)
        Files.writeString(home.resolve("log4j2.properties"), String.join("\n",
                "rootLogger.level = warn", "rootLogger.appenderRef.stdout.ref = console",
                "appender.console.type = Console", "appender.console.name = console",
                "appender.console.layout.type = PatternLayout", "appender.console.layout.pattern = %d %p %c{1}: %m%n",
                "logger.deploy.name = org.apache.spark.deploy", "logger.deploy.level = info", ""));
        try (ServerSocket s = new ServerSocket(0)) {
            port = s.getLocalPort();
        }
        master = start(dir.resolve("master.log"), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                "--port", Integer.toString(port), "--webui-port", "0");
        try {
            // the Workers start once the Master listens: a Worker that finds no Master retries only 5-15 s later
            awaitLine(master, dir.resolve("master.log"), "I have been elected leader", Duration.ofSeconds(120));
            for (int i = 0; i < workers; i++) {
                Path log = dir.resolve("worker-" + i + ".log");
                workers(start(log, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores",
                        Integer.toString(cores), "--memory", memory, "--work-dir",
                        Files.createDirectories(dir.resolve("work-" + i)).toString(), "--webui-port", "0",
                        masterUrl()));
            }
            for (int i = 0; i < workers; i++) {
                awaitLine(this.workers.get(i), dir.resolve("worker-" + i + ".log"),
                        "Successfully registered with master", Duration.ofSeconds(120));
            }
        } catch (IOException | InterruptedException | RuntimeException e) {
            close(); // nothing of a cluster that did not start may outlive the test
            throw e;
        }
    }

    private void workers(Process p) {
        workers.add(p);
    }

    public String masterUrl() {
        return "spark://127.0.0.1:" + port;
    }

    /**
     * Spark settings an application on this cluster needs: one-core executors that see the test class path. Their
     * JVMs start as the Master's and Workers' do (the client compiler only, the serial collector): a test's executor
     * trains a tiny model for a few seconds, and on a busy machine its start-up, not its steps, is what takes time.
     */
    public Map<String, String> appConf() {
        return Map.of("spark.executor.extraClassPath", classPath, "spark.executor.cores", "1",
                "spark.executor.memory", "768m", "spark.driver.host", "127.0.0.1",
                "spark.driver.bindAddress", "127.0.0.1", "spark.executor.heartbeatInterval", "2s",
                "spark.executor.extraJavaOptions", String.join(" ", JVM_OPTIONS));
    }

    /** Options of every JVM of the cluster (the heap aside). */
    private static final List<String> JVM_OPTIONS = List.of("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1");

    private Process start(Path log, String main, String... args) throws IOException {
        List<String> cmd = new ArrayList<>(List.of(java, "-Xmx256m"));
        cmd.addAll(JVM_OPTIONS);
        cmd.addAll(List.of("-Dlog4j2.configurationFile=" + home.resolve("log4j2.properties").toUri(), "-cp", classPath,
                main));
        cmd.addAll(List.of(args));
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(log.toFile());
        pb.environment().put("SPARK_HOME", home.toString());
        pb.environment().put("SPARK_SCALA_VERSION", "2.13");
        pb.environment().put("SPARK_LOCAL_IP", "127.0.0.1");
        return pb.start();
    }

    private static void awaitLine(Process p, Path log, String text, Duration limit) throws IOException,
            InterruptedException {
        long deadline = System.nanoTime() + limit.toNanos();
        while (System.nanoTime() < deadline) {
            if (Files.exists(log) && Files.readString(log).contains(text)) {
                return;
            }
            if (!p.isAlive()) {
                throw new IllegalStateException(log + ": the process exited (" + p.exitValue() + ")\n"
                        + Files.readString(log));
            }
            Thread.sleep(100);
        }
        throw new IllegalStateException(log + ": no '" + text + "' within " + limit + "\n" + Files.readString(log));
    }

    /** The executor JVMs Worker {@code i} runs now (its only child processes, once it has started). */
    public List<ProcessHandle> executors(int i) {
        return workers.get(i).children().filter(h -> h.info().command().orElse("").endsWith("java")).toList();
    }

    /** {@code kill -9} of every executor JVM of Worker {@code i} (the Worker starts new ones). */
    public int killExecutors(int i) {
        List<ProcessHandle> ex = executors(i);
        for (ProcessHandle h : ex) {
            h.destroyForcibly();
        }
        return ex.size();
    }

    /** {@code kill -9} of Worker {@code i} and its executors: gone for good. */
    public void stopWorker(int i) {
        killExecutors(i);
        workers.get(i).destroyForcibly();
    }

    @Override
    public void close() {
        for (int i = 0; i < workers.size(); i++) {
            stopWorker(i);
        }
        master.destroyForcibly();
    }
}

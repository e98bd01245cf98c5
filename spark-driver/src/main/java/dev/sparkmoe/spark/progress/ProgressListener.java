package dev.sparkmoe.spark.progress;

import dev.sparkmoe.parallel.train.StepMetrics;
import java.io.BufferedWriter;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.List;
import java.util.Locale;
import java.util.TreeMap;
import java.util.function.Consumer;
import org.apache.spark.scheduler.AccumulableInfo;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerExecutorMetricsUpdate;
import org.apache.spark.scheduler.SparkListenerTaskEnd;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import scala.Tuple4;
import scala.jdk.javaapi.CollectionConverters;

/**
 * Driver side of progress: watches one attempt's {@link MetricsAccumulator} in executor heartbeats (while the task
 * runs) and task-end events (when it finishes), and turns each new step into a console line, a JSON-lines record and
 * a callback. Works the same on a cluster and in local mode; how live it is depends on
 * {@code spark.executor.heartbeatInterval}.
 */
public final class ProgressListener extends SparkListener implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(ProgressListener.class);

    private final long totalSteps;
    private final boolean console;
    private final PrintStream out;
    private final BufferedWriter metricsFile;
    private final Consumer<StepMetrics> callback;
    private final TreeMap<Long, StepMetrics> seen = new TreeMap<>();
    private volatile long accumulatorId = -1;
    private String jobGroup;
    private final java.util.Set<Integer> stages = java.util.concurrent.ConcurrentHashMap.newKeySet();
    private final List<String> failures = new java.util.ArrayList<>();
    private volatile int attempt;
    private final String runId;

    /** {@code runId} goes into every metrics record, so that runs appending to one file can be told apart. */
    public ProgressListener(long totalSteps, boolean console, PrintStream out, Path metricsFile,
                            Consumer<StepMetrics> callback, String runId) throws IOException {
        this.totalSteps = totalSteps;
        this.runId = runId;
        this.console = console;
        this.out = out;
        this.callback = callback;
        if (metricsFile != null) {
            if (metricsFile.getParent() != null) {
                Files.createDirectories(metricsFile.getParent());
            }
            this.metricsFile = Files.newBufferedWriter(metricsFile, StandardCharsets.UTF_8,
                    StandardOpenOption.CREATE, StandardOpenOption.APPEND);
        } else {
            this.metricsFile = null;
        }
    }

    /** Starts watching a new attempt's accumulator; steps already shown are shown again only if they are new. */
    public synchronized void watch(MetricsAccumulator acc, int attemptNumber) {
        this.accumulatorId = acc.id();
        this.attempt = attemptNumber;
        // an attempt that resumes from a checkpoint re-takes the steps after it: report those again
        seen.clear();
    }

    @Override
    public void onExecutorMetricsUpdate(SparkListenerExecutorMetricsUpdate e) {
        for (Tuple4<Object, Object, Object, scala.collection.immutable.Seq<AccumulableInfo>> u
                : CollectionConverters.asJava(e.accumUpdates())) {
            for (AccumulableInfo info : CollectionConverters.asJava(u._4())) {
                consider(info);
            }
        }
    }

    /** Task failures of this job group are recorded, so that the driver can say what really went wrong. */
    public synchronized void failuresOf(String group) {
        this.jobGroup = group;
    }

    @Override
    public void onJobStart(org.apache.spark.scheduler.SparkListenerJobStart e) {
        java.util.Properties p = e.properties();
        if (p != null && jobGroup != null && jobGroup.equals(p.getProperty("spark.jobGroup.id"))) {
            for (Object s : CollectionConverters.asJava(e.stageIds())) {
                stages.add((Integer) s);
            }
        }
    }

    /**
     * The most telling task failure recorded since the last call (a rank's own exception rather than a peer's
     * report that it aborted), waiting up to {@code waitMs} for the listener bus to deliver it; null when none.
     */
    public String takeFailure(long waitMs) {
        long deadline = System.currentTimeMillis() + waitMs;
        while (true) {
            synchronized (this) {
                if (!failures.isEmpty() || System.currentTimeMillis() >= deadline) {
                    String best = null;
                    for (String f : failures) {
                        if (best == null || (best.contains("CommunicatorException") && !f.contains("CommunicatorException"))) {
                            best = f;
                        }
                    }
                    failures.clear();
                    return best;
                }
            }
            try {
                Thread.sleep(50);
            } catch (InterruptedException ex) {
                Thread.currentThread().interrupt();
                return null;
            }
        }
    }

    @Override
    public void onTaskEnd(SparkListenerTaskEnd e) {
        if (e.reason() instanceof org.apache.spark.ExceptionFailure ef && stages.contains(e.stageId())) {
            String what = ef.className().substring(ef.className().lastIndexOf('.') + 1) + ": " + ef.description()
                    + " (task of rank " + e.taskInfo().partitionId() + ")";
            synchronized (this) {
                failures.add(what);
            }
        }
        if (e.taskInfo() == null) {
            return;
        }
        for (AccumulableInfo info : CollectionConverters.asJava(e.taskInfo().accumulables())) {
            consider(info);
        }
    }

    private void consider(AccumulableInfo info) {
        if (info.id() != accumulatorId || info.update().isEmpty()) {
            return;
        }
        Object v = info.update().get();
        if (v instanceof List<?> l) {
            for (Object o : l) {
                if (o instanceof StepMetrics m) {
                    deliver(m);
                }
            }
        }
    }

    /** Reports a step once (steps already seen in this attempt are ignored). */
    public synchronized void deliver(StepMetrics m) {
        if (seen.containsKey(m.step())) {
            return;
        }
        seen.put(m.step(), m);
        if (console) {
            out.println(line(m, totalSteps, attempt));
        }
        if (metricsFile != null) {
            try {
                metricsFile.write(MetricsJson.toJson(m, attempt, runId));
                metricsFile.newLine();
                metricsFile.flush();
            } catch (IOException ex) {
                LOG.warn("cannot append to the metrics file: {}", ex.toString());
            }
        }
        if (callback != null) {
            try {
                callback.accept(m);
            } catch (RuntimeException ex) {
                LOG.warn("metrics callback failed: {}", ex.toString());
            }
        }
    }

    public static String line(StepMetrics m, long total, int attempt) {
        return String.format(Locale.ROOT, "[spark-moe] step %d/%d%s  loss %.4f  aux %.4f  lr %.3e  grad_norm %.3f  "
                        + "%,.0f tok/s", m.step(), total, attempt > 1 ? " (attempt " + attempt + ")" : "", m.loss(),
                m.auxLoss(), m.lr(), m.gradNorm(), m.tokensPerSecond());
    }

    @Override
    public synchronized void close() {
        if (metricsFile != null) {
            try {
                metricsFile.close();
            } catch (IOException e) {
                LOG.warn("closing the metrics file: {}", e.toString());
            }
        }
    }
}

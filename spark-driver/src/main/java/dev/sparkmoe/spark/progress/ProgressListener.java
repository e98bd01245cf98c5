package dev.sparkmoe.spark.progress;

import dev.sparkmoe.parallel.train.StepMetrics;
import java.io.BufferedWriter;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import java.util.function.Consumer;
import org.apache.spark.ExceptionFailure;
import org.apache.spark.ExecutorLostFailure;
import org.apache.spark.scheduler.AccumulableInfo;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerExecutorMetricsUpdate;
import org.apache.spark.scheduler.SparkListenerTaskEnd;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import scala.Tuple4;
import scala.jdk.javaapi.CollectionConverters;

/**
 * Driver side of progress. Steps come from rank 0 over the progress channel ({@link ProgressServer}) as they
 * finish, and, as a fallback, with the attempt's {@link MetricsAccumulator} in executor heartbeats and task-end
 * events; whatever the source, each step is reported exactly once and in order (a console line, a JSON-lines record
 * and a callback), across attempts: a resumed attempt's restored and re-taken steps that were already reported are
 * not reported again, and a run that continues an earlier one ({@link #continues}) does not report the earlier run's
 * steps that its checkpoint restores. Every metrics record starts with the run id. Events (a checkpoint committed,
 * the model written) print after the step they follow. Task failures of the run's job group are kept, a rank's own
 * report first, so that the driver can say what went wrong.
 */
public final class ProgressListener extends SparkListener implements ProgressServer.Sink, AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(ProgressListener.class);

    private final long totalSteps;
    private final boolean console;
    private final PrintStream out;
    private final BufferedWriter metricsFile;
    private final Consumer<StepMetrics> callback;
    private final TreeMap<Long, Waiting> waiting = new TreeMap<>();
    private final List<Event> events = new ArrayList<>();
    private long next = 1;
    private volatile long accumulatorId = -1;
    private String jobGroup;
    private final java.util.Set<Integer> stages = java.util.concurrent.ConcurrentHashMap.newKeySet();
    private final List<String> ownFailures = new ArrayList<>();
    private final List<String> failures = new ArrayList<>();
    private int attempt;
    private String layoutNote = "";
    private Map<String, Object> layoutFields = Map.of();
    private final String runId;
    private long continued;

    private record Waiting(StepMetrics m, int attempt, String note, Map<String, Object> fields) {
    }

    private record Event(long after, String text) {
    }

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

    /**
     * This run continues an earlier one (checkpoint.resume) whose newest checkpoint was at {@code step}: the steps up
     * to it were reported by the run that took them, so when a checkpoint restores them they are not reported again.
     * Steps this run takes are reported even at or below {@code step} (resumed from an older checkpoint after the
     * newest was found damaged and set aside).
     */
    public synchronized void continues(long step) {
        this.continued = step;
    }

    /** Starts watching a new attempt's accumulator. */
    public synchronized void watch(MetricsAccumulator acc, int attemptNumber) {
        watch(acc, attemptNumber, "", Map.of());
    }

    /**
     * Starts watching a new attempt whose layout differs from the configured one: {@code note} is added to its
     * console lines, {@code fields} to its metrics records.
     */
    public synchronized void watch(MetricsAccumulator acc, int attemptNumber, String note,
                                   Map<String, Object> fields) {
        this.accumulatorId = acc.isRegistered() ? acc.id() : -1;
        this.attempt = attemptNumber;
        this.layoutNote = note;
        this.layoutFields = fields;
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
     * The most telling failure recorded since the last call, waiting up to {@code waitMs} for the listener bus to
     * deliver one; null when none. A rank's own report of its exception comes first, then a task's exception that is
     * not a peer's report that the group broke, then a lost executor, then the rest.
     */
    public String takeFailure(long waitMs) {
        long deadline = System.currentTimeMillis() + waitMs;
        while (true) {
            synchronized (this) {
                if (!ownFailures.isEmpty() || !failures.isEmpty() || System.currentTimeMillis() >= deadline) {
                    String best = ownFailures.isEmpty() ? null : ownFailures.get(0);
                    int bestRank = Integer.MAX_VALUE;
                    if (best == null) {
                        for (String f : failures) {
                            int r = f.contains("CommunicatorException") || f.contains("CollectiveTimeoutException")
                                    ? 2 : f.startsWith("executor lost") ? 1 : 0;
                            if (r < bestRank) {
                                best = f;
                                bestRank = r;
                            }
                        }
                    }
                    ownFailures.clear();
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
        if (stages.contains(e.stageId()) && e.taskInfo() != null) {
            String what = null;
            if (e.reason() instanceof ExceptionFailure ef) {
                what = ef.className().substring(ef.className().lastIndexOf('.') + 1) + ": " + ef.description()
                        + " (task of rank " + e.taskInfo().partitionId() + ")";
            } else if (e.reason() instanceof ExecutorLostFailure lost) {
                what = "executor lost: the executor running rank " + e.taskInfo().partitionId() + " on "
                        + e.taskInfo().host() + " exited (" + lost.toErrorString() + ")";
            }
            if (what != null) {
                synchronized (this) {
                    failures.add(what);
                }
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

    @Override
    public void step(int attemptNumber, String metricsJson) {
        deliver(MetricsJson.fromJson(metricsJson), attemptNumber);
    }

    @Override
    public synchronized void event(int attemptNumber, long afterStep, String text) {
        events.add(new Event(afterStep, text));
        drain();
    }

    @Override
    public synchronized void failure(int attemptNumber, int rank, String text) {
        ownFailures.add(text);
    }

    /** Reports a step of the current attempt (see {@link #deliver(StepMetrics, int)}). */
    public synchronized void deliver(StepMetrics m) {
        deliver(m, attempt);
    }

    /**
     * Reports step {@code m} once: a step already reported (by any attempt) is dropped, one that comes early waits
     * for the steps before it. Attempt 0 marks a step restored from a checkpoint rather than taken by this run.
     */
    public synchronized void deliver(StepMetrics m, int attemptNumber) {
        if (m.step() < next || waiting.containsKey(m.step())) {
            return;
        }
        boolean current = attemptNumber == attempt;
        waiting.put(m.step(), new Waiting(m, attemptNumber, current ? layoutNote : "",
                current ? layoutFields : Map.of()));
        drain();
    }

    private void drain() {
        while (true) {
            Event ev = null;
            for (Event e : events) {
                if (e.after() < next) {
                    ev = e;
                    break;
                }
            }
            if (ev != null) {
                events.remove(ev);
                if (console) {
                    out.println("[spark-moe] " + ev.text());
                } else {
                    LOG.info(ev.text());
                }
                continue;
            }
            Waiting w = waiting.remove(next);
            if (w == null) {
                return;
            }
            if (w.attempt() != 0 || w.m().step() > continued) { // else: the earlier run reported it
                report(w);
            }
            next++;
        }
    }

    private void report(Waiting w) {
        StepMetrics m = w.m();
        if (console) {
            out.println(line(m, totalSteps, w.attempt(), w.note()));
        }
        if (metricsFile != null) {
            try {
                metricsFile.write(MetricsJson.toJson(m, w.attempt(), runId, w.fields()));
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

    /** Prints whatever events are still waiting (the run ended before the steps they follow). */
    public synchronized void flushEvents() {
        for (Event e : events) {
            if (console) {
                out.println("[spark-moe] " + e.text());
            } else {
                LOG.info(e.text());
            }
        }
        events.clear();
    }

    public static String line(StepMetrics m, long total, int attempt) {
        return line(m, total, attempt, "");
    }

    static String line(StepMetrics m, long total, int attempt, String note) {
        String label = attempt > 1 ? "attempt " + attempt + (note.isEmpty() ? "" : ", " + note) : note;
        return String.format(Locale.ROOT, "[spark-moe] step %d/%d%s  loss %.4f  aux %.4f  lr %.3e  grad_norm %.3f  "
                        + "%,.0f tok/s", m.step(), total, label.isEmpty() ? "" : " (" + label + ")", m.loss(),
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

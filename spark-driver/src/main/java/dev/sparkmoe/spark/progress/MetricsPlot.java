package dev.sparkmoe.spark.progress;

import dev.sparkmoe.parallel.train.StepMetrics;
import java.awt.BasicStroke;
import java.awt.Color;
import java.awt.Font;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.TreeMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.function.ToDoubleFunction;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.jfree.chart.ChartUtils;
import org.jfree.chart.JFreeChart;
import org.jfree.chart.axis.NumberAxis;
import org.jfree.chart.plot.CombinedDomainXYPlot;
import org.jfree.chart.plot.XYPlot;
import org.jfree.chart.renderer.xy.XYLineAndShapeRenderer;
import org.jfree.data.xy.XYSeries;
import org.jfree.data.xy.XYSeriesCollection;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The run's metrics as a PNG in its run folder ({@value #FILE_NAME}): loss, load-balancing (aux) loss, learning rate
 * and tokens/s against the step, four panels over one step axis (JFreeChart, drawn headless on the driver). Redrawn
 * at every checkpoint (in the background, so that the listener bus never waits) and at the end; written to a
 * temporary name and renamed, so a reader never sees half a file. A plot that cannot be written is a warning, never
 * a failed run.
 */
public final class MetricsPlot implements AutoCloseable {
    public static final String FILE_NAME = "metrics.png";
    static final int WIDTH = 1000;
    static final int HEIGHT = 1100;
    private static final Logger LOG = LoggerFactory.getLogger(MetricsPlot.class);

    private final String target;
    private final String title;
    private final Configuration conf;
    private final TreeMap<Long, StepMetrics> steps = new TreeMap<>();
    private final ExecutorService drawer = Executors.newSingleThreadExecutor(r -> {
        Thread t = new Thread(r, "spark-moe-plot");
        t.setDaemon(true);
        return t;
    });

    private final Renderer renderer;
    private volatile String disabled; // why drawing stopped for good (a native library the JVM cannot load), or null

    /** Draws the chart: {@link #png} in the job, another in tests. */
    interface Renderer {
        byte[] render(List<StepMetrics> ms, String title) throws IOException;
    }

    /** {@code target}: URI of the PNG on any Hadoop file system; {@code title}: names the run in the chart. */
    public MetricsPlot(String target, String title, Configuration conf) {
        this(target, title, conf, MetricsPlot::png);
    }

    MetricsPlot(String target, String title, Configuration conf, Renderer renderer) {
        this.target = target;
        this.title = title;
        this.conf = conf;
        this.renderer = renderer;
    }

    public synchronized void add(StepMetrics m) {
        steps.put(m.step(), m);
    }

    public synchronized void addAll(List<StepMetrics> ms) {
        ms.forEach(this::add);
    }

    /** Draws in the background with the steps known now. */
    public void drawLater() {
        List<StepMetrics> now = snapshot();
        if (!drawer.isShutdown()) {
            drawer.submit(() -> write(now));
        }
    }

    /** Draws now (after any background drawing) with every step known. */
    public void drawNow() {
        List<StepMetrics> now = snapshot();
        drawer.shutdown();
        try {
            drawer.awaitTermination(30, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        write(now);
    }

    private synchronized List<StepMetrics> snapshot() {
        return new ArrayList<>(steps.values());
    }

    private void write(List<StepMetrics> ms) {
        if (ms.isEmpty() || disabled != null) {
            return;
        }
        try {
            byte[] png = renderer.render(ms, title);
            Path fin = new Path(target);
            FileSystem fs = fin.getFileSystem(conf);
            Path tmp = new Path(fin.getParent(), "." + fin.getName() + ".tmp");
            try (OutputStream os = fs.create(tmp, true)) {
                os.write(png);
            }
            fs.delete(fin, false);
            if (!fs.rename(tmp, fin)) {
                throw new IOException("cannot rename " + tmp + " to " + fin);
            }
        } catch (IOException | RuntimeException e) {
            LOG.warn("the metrics plot {} was not written: {}", target, e.toString());
        } catch (LinkageError e) {
            // Java2D's font rendering needs native libraries (libfontmanager and the system's libharfbuzz and
            // libfreetype on most JDK builds) that a slim host may lack: the same failure would repeat at every draw
            disabled = e.toString();
            LOG.warn("the metrics plot {} is not drawn in this run: this JVM cannot load the libraries Java2D draws "
                    + "text with ({}); the metrics file and the console have every step. Fix: install the missing "
                    + "library on the driver's host (e.g. libharfbuzz0b and libfreetype6), or run the driver on a JDK "
                    + "that bundles them", target, e.toString());
        }
    }

    /** The chart as PNG bytes: loss, aux loss, learning rate and tokens/s against the step. */
    public static byte[] png(List<StepMetrics> ms, String title) throws IOException {
        if (System.getProperty("java.awt.headless") == null) {
            System.setProperty("java.awt.headless", "true");
        }
        NumberAxis stepAxis = new NumberAxis("step");
        stepAxis.setStandardTickUnits(NumberAxis.createIntegerTickUnits());
        CombinedDomainXYPlot plot = new CombinedDomainXYPlot(stepAxis);
        plot.setGap(12);
        plot.add(panel("loss", ms, StepMetrics::loss, new Color(0x1f77b4), false), 3);
        plot.add(panel("aux loss", ms, StepMetrics::auxLoss, new Color(0xff7f0e), false), 2);
        plot.add(panel("learning rate", ms, StepMetrics::lr, new Color(0x2ca02c), true), 2);
        plot.add(panel("tokens/s", ms, StepMetrics::tokensPerSecond, new Color(0xd62728), false), 2);
        StepMetrics last = ms.get(ms.size() - 1);
        String head = String.format(Locale.ROOT, "spark-moe %s: loss %.4f at step %d", title, last.loss(),
                last.step());
        JFreeChart chart = new JFreeChart(head, new Font(Font.SANS_SERIF, Font.BOLD, 16), plot, false);
        chart.setBackgroundPaint(Color.WHITE);
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        ChartUtils.writeChartAsPNG(bytes, chart, WIDTH, HEIGHT);
        return bytes.toByteArray();
    }

    private static XYPlot panel(String name, List<StepMetrics> ms, ToDoubleFunction<StepMetrics> value, Color color,
                                boolean scientific) {
        XYSeries s = new XYSeries(name);
        for (StepMetrics m : ms) {
            double v = value.applyAsDouble(m);
            if (Double.isFinite(v)) {
                s.add(m.step(), v);
            }
        }
        NumberAxis axis = new NumberAxis(name);
        axis.setAutoRangeIncludesZero(false);
        if (scientific) {
            axis.setNumberFormatOverride(new java.text.DecimalFormat("0.0##E0"));
        }
        XYLineAndShapeRenderer r = new XYLineAndShapeRenderer(true, ms.size() <= 40);
        r.setSeriesPaint(0, color);
        r.setSeriesStroke(0, new BasicStroke(2f));
        XYPlot p = new XYPlot(new XYSeriesCollection(s), null, axis, r);
        p.setBackgroundPaint(Color.WHITE);
        p.setDomainGridlinePaint(Color.LIGHT_GRAY);
        p.setRangeGridlinePaint(Color.LIGHT_GRAY);
        return p;
    }

    @Override
    public void close() {
        drawer.shutdownNow();
    }
}

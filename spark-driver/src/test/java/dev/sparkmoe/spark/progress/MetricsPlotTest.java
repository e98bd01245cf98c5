package dev.sparkmoe.spark.progress;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.parallel.train.StepMetrics;
import java.awt.image.BufferedImage;
import java.io.ByteArrayInputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import javax.imageio.ImageIO;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class MetricsPlotTest {
    private static StepMetrics step(long s) {
        return new StepMetrics(s, 10.0 / s, 0.5, 1e-4, 1.0, 4096, 0.1);
    }

    @Test
    void writesThePngOfEveryStepKnown(@TempDir Path dir) throws Exception {
        Path png = dir.resolve(MetricsPlot.FILE_NAME);
        try (MetricsPlot plot = new MetricsPlot(png.toUri().toString(), "run-test", new Configuration())) {
            plot.addAll(List.of(step(1), step(2), step(3)));
            plot.drawNow();
        }
        BufferedImage img = ImageIO.read(new ByteArrayInputStream(Files.readAllBytes(png)));
        assertEquals(MetricsPlot.WIDTH, img.getWidth());
        assertEquals(MetricsPlot.HEIGHT, img.getHeight());
        assertFalse(Files.exists(dir.resolve("." + MetricsPlot.FILE_NAME + ".tmp")), "no temporary file left");
    }

    /**
     * Seen on a GPU host: the jlink'ed runtime's libfontmanager.so could not load the system's libharfbuzz.so.0, and
     * the UnsatisfiedLinkError of the final draw failed a job whose model was already written.
     */
    @Test
    void aNativeLibraryTheJvmCannotLoadStopsThePlotNotTheRun(@TempDir Path dir) throws Exception {
        Path png = dir.resolve(MetricsPlot.FILE_NAME);
        AtomicInteger calls = new AtomicInteger();
        MetricsPlot.Renderer missingLibrary = (ms, title) -> {
            calls.incrementAndGet();
            throw new UnsatisfiedLinkError("libfontmanager.so: libharfbuzz.so.0: cannot open shared object file");
        };
        try (MetricsPlot plot = new MetricsPlot(png.toUri().toString(), "run-test", new Configuration(),
                missingLibrary)) {
            plot.add(step(1));
            plot.drawNow(); // must not throw
            plot.add(step(2));
            plot.drawNow();
        }
        assertEquals(1, calls.get(), "after a linkage error the plot is not tried again");
        assertFalse(Files.exists(png));
    }

    @Test
    void anIoErrorIsAWarningAndTheNextDrawTriesAgain(@TempDir Path dir) throws Exception {
        Path png = dir.resolve(MetricsPlot.FILE_NAME);
        AtomicInteger calls = new AtomicInteger();
        byte[] bytes = {1, 2, 3};
        MetricsPlot.Renderer flaky = (ms, title) -> {
            if (calls.incrementAndGet() == 1) {
                throw new java.io.IOException("disk full");
            }
            return bytes;
        };
        MetricsPlot plot = new MetricsPlot(png.toUri().toString(), "run-test", new Configuration(), flaky);
        plot.add(step(1));
        plot.drawLater();
        plot.drawNow();
        plot.close();
        assertEquals(2, calls.get());
        assertTrue(Files.exists(png));
        assertArrayEquals(bytes, Files.readAllBytes(png));
    }
}

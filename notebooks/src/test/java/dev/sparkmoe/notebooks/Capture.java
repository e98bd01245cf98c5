package dev.sparkmoe.notebooks;

import java.io.ByteArrayOutputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;

/** Tees System.out into a buffer while a cell runs (other threads' prints included, as notebook kernels do). */
final class Capture implements AutoCloseable {
    private final PrintStream original = System.out;
    private final ByteArrayOutputStream buf = new ByteArrayOutputStream();
    final PrintStream tee;

    Capture() {
        tee = new PrintStream(new OutputStream() {
            @Override
            public synchronized void write(int b) {
                original.write(b);
                buf.write(b);
            }

            @Override
            public synchronized void write(byte[] b, int off, int len) {
                original.write(b, off, len);
                buf.write(b, off, len);
            }

            @Override
            public void flush() {
                original.flush();
            }
        }, true, StandardCharsets.UTF_8);
        System.setOut(tee);
    }

    String text() {
        tee.flush();
        synchronized (tee) {
            return buf.toString(StandardCharsets.UTF_8);
        }
    }

    @Override
    public void close() {
        tee.flush();
        System.setOut(original);
    }
}

package dev.sparkmoe.spark.progress;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.sparkmoe.gpu.comm.JobSecret;
import dev.sparkmoe.parallel.train.StepMetrics;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.Serializable;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.HexFormat;
import java.util.concurrent.LinkedBlockingQueue;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A rank's end of the progress channel ({@link ProgressServer}). Steps and events are queued and sent by a
 * background thread, so the training loop never waits on the network; {@link #flush} waits until the driver has
 * handled everything queued (before a rank logs a checkpoint or the model, so that those lines never come before
 * the steps they follow). A rank that cannot reach the driver logs that once and goes on without the channel
 * (progress then arrives with the executor heartbeats). {@link #toString()} never shows the secret.
 */
public final class ProgressReporter implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(ProgressReporter.class);
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final String END = "";

    /** Where the driver listens and the secret ranks prove; shipped in the task closure. */
    public record Address(String host, int port, String encodedSecret) implements Serializable {
        @Override
        public String toString() {
            return host + ":" + port + " (secret redacted)";
        }
    }

    private final int attempt;
    private final Socket socket;
    private final OutputStream out;
    private final BufferedReader in;
    private final LinkedBlockingQueue<String> queue = new LinkedBlockingQueue<>();
    private final Object lock = new Object();
    private long queued;
    private long handled;
    private volatile boolean broken;

    private ProgressReporter(int attempt, Socket socket) throws IOException {
        this.attempt = attempt;
        this.socket = socket;
        this.out = socket == null ? null : socket.getOutputStream();
        this.in = socket == null ? null
                : new BufferedReader(new InputStreamReader(socket.getInputStream(), StandardCharsets.UTF_8));
        if (socket != null) {
            Thread t = new Thread(this::sendLoop, "spark-moe-progress-reporter");
            t.setDaemon(true);
            t.start();
        }
    }

    /** Connects and authenticates; on any failure a reporter that drops everything (and says so once). */
    public static ProgressReporter connect(Address a, int attempt, Duration timeout) {
        if (a == null) {
            return disconnected(attempt);
        }
        Socket s = new Socket();
        try {
            s.setTcpNoDelay(true);
            s.connect(new InetSocketAddress(a.host(), a.port()), (int) Math.min(Integer.MAX_VALUE, timeout.toMillis()));
            s.setSoTimeout((int) Math.min(Integer.MAX_VALUE, timeout.toMillis()));
            BufferedReader r = new BufferedReader(new InputStreamReader(s.getInputStream(), StandardCharsets.UTF_8));
            String hello = r.readLine();
            if (hello == null || !hello.startsWith("spark-moe-progress ")) {
                throw new IOException("unexpected greeting " + hello);
            }
            byte[] nonce = HexFormat.of().parseHex(hello.substring("spark-moe-progress ".length()).strip());
            byte[] proof = JobSecret.decode(a.encodedSecret()).hmac(nonce, ProgressServer.LABEL);
            s.getOutputStream().write((HexFormat.of().formatHex(proof) + "\n").getBytes(StandardCharsets.UTF_8));
            s.getOutputStream().flush();
            return new ProgressReporter(attempt, s);
        } catch (IOException | RuntimeException e) {
            LOG.warn("cannot reach the driver's progress channel at {} ({}); progress will come with the executor "
                    + "heartbeats", a, e.toString());
            try {
                s.close();
            } catch (IOException ignored) {
                // nothing to release
            }
            return disconnected(attempt);
        }
    }

    private static ProgressReporter disconnected(int attempt) {
        try {
            return new ProgressReporter(attempt, null);
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    /** Queues one finished step. */
    public void step(StepMetrics m) {
        ObjectNode o = message("step");
        o.put("metrics", MetricsJson.toJson(m));
        enqueue(o);
    }

    /** Queues a step restored from a checkpoint (taken by an earlier attempt; reported only if it was not yet). */
    public void restored(StepMetrics m) {
        ObjectNode o = message("step");
        o.put("attempt", 0);
        o.put("metrics", MetricsJson.toJson(m));
        enqueue(o);
    }

    /** Queues a line the driver prints once every step up to {@code afterStep} has been printed. */
    public void event(long afterStep, String text) {
        ObjectNode o = message("event");
        o.put("after", afterStep);
        o.put("text", text);
        enqueue(o);
    }

    /** Sends this rank's own failure and waits (up to {@code timeout}) until the driver has it. */
    public void failure(int rank, String text, Duration timeout) {
        ObjectNode o = message("failure");
        o.put("rank", rank);
        o.put("text", text);
        enqueue(o);
        flush(timeout);
    }

    private ObjectNode message(String kind) {
        ObjectNode o = JSON.createObjectNode();
        o.put("kind", kind);
        o.put("attempt", attempt);
        return o;
    }

    private void enqueue(ObjectNode o) {
        if (socket == null || broken) {
            return;
        }
        synchronized (lock) {
            o.put("seq", ++queued);
            queue.add(o.toString());
        }
    }

    /** Waits until the driver has handled every message queued so far, or {@code timeout} has passed. */
    public void flush(Duration timeout) {
        long deadline = System.nanoTime() + timeout.toNanos();
        synchronized (lock) {
            long want = queued;
            while (handled < want && !broken) {
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    LOG.debug("progress channel: the driver has not acknowledged message {} (last {})", want, handled);
                    return;
                }
                try {
                    lock.wait(Math.max(1, left / 1_000_000));
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    return;
                }
            }
        }
    }

    private void sendLoop() {
        try {
            while (true) {
                String msg = queue.take();
                if (msg == END) {
                    return;
                }
                out.write((msg + "\n").getBytes(StandardCharsets.UTF_8));
                out.flush();
                String ack = in.readLine();
                if (ack == null || !ack.startsWith("ack ")) {
                    throw new IOException("the driver closed the progress channel");
                }
                synchronized (lock) {
                    handled = Long.parseLong(ack.substring(4).strip());
                    lock.notifyAll();
                }
            }
        } catch (IOException | RuntimeException e) {
            LOG.warn("progress channel to the driver lost ({}); progress will come with the executor heartbeats",
                    e.toString());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } finally {
            broken = true;
            synchronized (lock) {
                lock.notifyAll();
            }
        }
    }

    /** Flushes (a few seconds at most) and closes. */
    @Override
    public void close() {
        if (socket == null) {
            return;
        }
        flush(Duration.ofSeconds(5));
        queue.add(END);
        try {
            socket.close();
        } catch (IOException e) {
            LOG.debug("closing the progress channel: {}", e.toString());
        }
    }

    @Override
    public String toString() {
        return "ProgressReporter[attempt " + attempt + (socket == null ? ", not connected" : "") + "]";
    }
}

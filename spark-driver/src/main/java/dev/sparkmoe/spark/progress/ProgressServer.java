package dev.sparkmoe.spark.progress;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.sparkmoe.gpu.comm.JobSecret;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.util.HexFormat;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The driver's end of the progress channel: ranks connect (rank 0 for its steps and events, any rank to report its
 * own failure), prove they hold the job secret (HMAC-SHA256 over a nonce of the server's), then send one JSON message
 * per line, each acknowledged once the driver has handled it. Messages reach the {@link Sink} in the order a rank
 * sent them, as they arrive: steps print as they finish instead of with the next executor heartbeat.
 *
 * <pre>
 * server -> rank : "spark-moe-progress NONCE_HEX\n"
 * rank -> server : "HMAC_HEX\n"        HMAC(secret, nonce, "spark-moe-progress")
 * rank -> server : {"seq": n, "kind": "step" | "event" | "failure", "attempt": a, ...}\n
 * server -> rank : "ack n\n"
 * </pre>
 */
public final class ProgressServer implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(ProgressServer.class);
    static final byte[] LABEL = "spark-moe-progress".getBytes(StandardCharsets.UTF_8);
    private static final ObjectMapper JSON = new ObjectMapper();

    /** What the driver does with the messages. */
    public interface Sink {
        void step(int attempt, String metricsJson);

        void event(int attempt, long afterStep, String text);

        void failure(int attempt, int rank, String text);
    }

    private final ServerSocket socket;
    private final JobSecret secret;
    private final Sink sink;
    private final List<Socket> open = new CopyOnWriteArrayList<>();
    private final String host;
    private volatile boolean closed;

    /** Listens on {@code bindHost} (any free port) and advertises {@code host}, where executors reach the driver. */
    public ProgressServer(String host, String bindHost, JobSecret secret, Sink sink) throws IOException {
        this.secret = secret;
        this.sink = sink;
        this.host = host;
        this.socket = new ServerSocket();
        socket.bind(new InetSocketAddress(InetAddress.getByName(bindHost), 0));
        Thread t = new Thread(this::acceptLoop, "spark-moe-progress-server");
        t.setDaemon(true);
        t.start();
    }

    /** Where ranks connect, with the secret they prove. */
    public ProgressReporter.Address address() {
        return new ProgressReporter.Address(host, socket.getLocalPort(), secret.encode());
    }

    private void acceptLoop() {
        while (!closed) {
            try {
                Socket s = socket.accept();
                open.add(s);
                Thread t = new Thread(() -> serve(s), "spark-moe-progress-" + s.getRemoteSocketAddress());
                t.setDaemon(true);
                t.start();
            } catch (IOException e) {
                if (!closed) {
                    LOG.warn("progress channel: accept failed: {}", e.toString());
                }
            }
        }
    }

    private void serve(Socket s) {
        try (s) {
            s.setTcpNoDelay(true);
            s.setSoTimeout(10_000);
            OutputStream out = s.getOutputStream();
            BufferedReader in = new BufferedReader(new InputStreamReader(s.getInputStream(), StandardCharsets.UTF_8));
            byte[] nonce = new byte[32];
            new SecureRandom().nextBytes(nonce);
            out.write(("spark-moe-progress " + HexFormat.of().formatHex(nonce) + "\n").getBytes(StandardCharsets.UTF_8));
            out.flush();
            String proof = in.readLine();
            if (proof == null || !MessageDigest.isEqual(HexFormat.of().parseHex(proof.strip()),
                    secret.hmac(nonce, LABEL))) {
                LOG.warn("progress channel: {} did not prove the job secret; closed", s.getRemoteSocketAddress());
                return;
            }
            s.setSoTimeout(0);
            for (String line = in.readLine(); line != null && !closed; line = in.readLine()) {
                JsonNode m = JSON.readTree(line);
                int attempt = m.path("attempt").asInt();
                switch (m.path("kind").asText()) {
                    case "step" -> sink.step(attempt, m.path("metrics").asText());
                    case "event" -> sink.event(attempt, m.path("after").asLong(), m.path("text").asText());
                    case "failure" -> sink.failure(attempt, m.path("rank").asInt(), m.path("text").asText());
                    default -> LOG.warn("progress channel: unknown message {}", line);
                }
                out.write(("ack " + m.path("seq").asLong() + "\n").getBytes(StandardCharsets.UTF_8));
                out.flush();
            }
        } catch (IOException | RuntimeException e) {
            if (!closed) {
                LOG.debug("progress channel: connection ended: {}", e.toString());
            }
        } finally {
            open.remove(s);
        }
    }

    @Override
    public void close() {
        closed = true;
        try {
            socket.close();
        } catch (IOException e) {
            LOG.debug("closing the progress server: {}", e.toString());
        }
        for (Socket s : open) {
            try {
                s.close();
            } catch (IOException e) {
                LOG.debug("closing a progress connection: {}", e.toString());
            }
        }
    }
}

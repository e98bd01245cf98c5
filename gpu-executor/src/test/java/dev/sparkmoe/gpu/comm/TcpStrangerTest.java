package dev.sparkmoe.gpu.comm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketException;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * Strangers knock on rank 0's port during bootstrap and on rank 0's and rank 2's ports while collectives run: a silent
 * connection, one with the wrong secret (impersonating a real rank), and one sending garbage. Each is closed by the
 * server and logged; the job's results are bit-identical to a run without strangers.
 */
class TcpStrangerTest {

    private final ConcurrentLinkedQueue<LogRecord> records = new ConcurrentLinkedQueue<>();
    private final Logger logger = Logger.getLogger(TcpCommunicator.class.getName());
    private final Handler handler = new Handler() {
        @Override
        public void publish(LogRecord r) {
            records.add(r);
        }

        @Override
        public void flush() {
        }

        @Override
        public void close() {
        }
    };

    @BeforeEach
    void attach() {
        logger.addHandler(handler);
    }

    @AfterEach
    void detach() {
        logger.removeHandler(handler);
    }

    /** Kinds of stranger. */
    enum Kind { SILENT, WRONG_SECRET, GARBAGE }

    /** A stranger's socket and what it did. */
    record Stranger(Kind kind, int targetRank, Socket socket) {
        int localPort() {
            return socket.getLocalPort();
        }
    }

    private static Socket connectWithRetry(InetSocketAddress addr) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (true) {
            try {
                Socket s = new Socket();
                s.connect(addr, 2000);
                return s;
            } catch (IOException e) {
                if (System.nanoTime() > deadline) {
                    throw e;
                }
                Thread.sleep(20);
            }
        }
    }

    private static Stranger knock(Kind kind, int targetRank, InetSocketAddress addr, int claimRank) throws Exception {
        Socket s = connectWithRetry(addr);
        s.setSoTimeout(5000);
        switch (kind) {
            case SILENT -> {
                // connects and says nothing
            }
            case GARBAGE -> {
                s.getOutputStream().write("GET / HTTP/1.1\r\nHost: x\r\n\r\n".getBytes(StandardCharsets.US_ASCII));
                s.getOutputStream().flush();
            }
            case WRONG_SECRET -> {
                // speaks the protocol, claims to be a real rank, but holds another job's secret
                DataInputStream in = new DataInputStream(s.getInputStream());
                byte[] magic = new byte[8];
                in.readFully(magic);
                in.readInt();
                byte[] nonceS = new byte[32];
                in.readFully(nonceS);
                JobSecret wrong = JobSecret.generate();
                DataOutputStream out = new DataOutputStream(s.getOutputStream());
                out.write(magic);
                out.writeInt(claimRank);
                out.write(new byte[32]);
                out.write(wrong.hmac(nonceS, ByteBuffer.allocate(4).putInt(claimRank).array(),
                        "spark-moe".getBytes(StandardCharsets.US_ASCII)));
                out.flush();
            }
            default -> throw new IllegalStateException();
        }
        return new Stranger(kind, targetRank, s);
    }

    /** True when the server closed the connection (EOF or reset) within the wait; the stranger never gets a proof. */
    private static boolean closedByServer(Socket s, Kind kind) throws IOException {
        s.setSoTimeout(10_000);
        InputStream in = s.getInputStream();
        byte[] buf = new byte[256];
        int total = 0;
        try {
            while (true) {
                int n = in.read(buf);
                if (n < 0) {
                    break;
                }
                total += n;
            }
        } catch (SocketTimeoutException e) {
            return false;
        } catch (SocketException e) {
            return true; // reset by the server
        } finally {
            s.close();
        }
        // silent and garbage strangers received at most the greeting (8 + 4 + 32 bytes); the wrong-secret one already
        // read the greeting and must receive nothing more (no server proof)
        int allowed = kind == Kind.WRONG_SECRET ? 0 : 44;
        return total <= allowed;
    }

    private List<String> run(boolean withStrangers, List<Stranger> strangers, JobSecret secret) throws Exception {
        int n = 4;
        int port = TcpHarness.freePort();
        Map<Integer, TcpCommunicator> comms = new ConcurrentHashMap<>();
        CountDownLatch connected = new CountDownLatch(n);
        CountDownLatch go = new CountDownLatch(1);
        CountDownLatch rank0Started = new CountDownLatch(1);
        List<TcpHarness.Outcome<String>> outs;
        Thread knocker = null;
        List<Exception> knockErrors = java.util.Collections.synchronizedList(new ArrayList<>());
        if (withStrangers) {
            // knock on rank 0's port while it bootstraps (before the other ranks exist)
            knocker = new Thread(() -> {
                try {
                    rank0Started.await();
                    InetSocketAddress r0 = new InetSocketAddress(TcpHarness.HOST, port);
                    strangers.add(knock(Kind.SILENT, 0, r0, 1));
                    strangers.add(knock(Kind.WRONG_SECRET, 0, r0, 1));
                    strangers.add(knock(Kind.GARBAGE, 0, r0, 1));
                } catch (Exception e) {
                    knockErrors.add(e);
                }
            });
            knocker.start();
        }
        outs = TcpHarness.runRanks(n, Duration.ofSeconds(60), r -> {
            if (r != 0 && withStrangers) {
                Thread.sleep(300); // let the strangers reach rank 0 first
            }
            if (r == 0) {
                rank0Started.countDown();
            }
            try (TcpCommunicator c = TcpCommunicator.connect(TcpHarness.rendezvous(n, r, port, secret).build())) {
                comms.put(r, c);
                connected.countDown();
                go.await(30, TimeUnit.SECONDS);
                String first = TcpChecks.runAll(c);
                String second = TcpChecks.runExtra(c);
                assertEquals(first, second, "repeat run gives the same bits");
                return first;
            }
        }, () -> {
            try {
                assertTrue(connected.await(30, TimeUnit.SECONDS), "ranks did not connect");
                if (withStrangers) {
                    // knock again on rank 0 and on rank 2 while collectives run
                    InetSocketAddress a0 = comms.get(0).listenAddress();
                    InetSocketAddress a2 = comms.get(2).listenAddress();
                    strangers.add(knock(Kind.SILENT, 2, a2, 3));
                    go.countDown();
                    strangers.add(knock(Kind.WRONG_SECRET, 2, a2, 3));
                    strangers.add(knock(Kind.GARBAGE, 2, a2, 3));
                    strangers.add(knock(Kind.SILENT, 0, a0, 2));
                    strangers.add(knock(Kind.WRONG_SECRET, 0, a0, 2));
                    strangers.add(knock(Kind.GARBAGE, 0, a0, 2));
                }
            } catch (Exception e) {
                knockErrors.add(e);
            } finally {
                go.countDown();
            }
        });
        if (knocker != null) {
            knocker.join(30_000);
        }
        assertTrue(knockErrors.isEmpty(), "stranger errors: " + knockErrors);
        return TcpHarness.values(outs);
    }

    @Test
    void strangersAreRefusedLoggedAndChangeNothing() throws Exception {
        JobSecret secret = JobSecret.generate();
        List<String> baseline = run(false, new ArrayList<>(), secret);
        records.clear();
        List<Stranger> strangers = java.util.Collections.synchronizedList(new ArrayList<>());
        List<String> attacked = run(true, strangers, JobSecret.generate());
        assertEquals(baseline, attacked, "results with strangers differ from results without");
        assertEquals(9, strangers.size());
        for (Stranger s : strangers) {
            int localPort = s.localPort();
            assertTrue(closedByServer(s.socket(), s.kind()), s + " was not closed by the server");
            String reason = switch (s.kind()) {
                case SILENT -> "silent connection";
                case WRONG_SECRET -> "authentication failed";
                case GARBAGE -> "bad greeting";
            };
            boolean logged = records.stream().anyMatch(r -> r.getLevel().intValue() >= Level.WARNING.intValue()
                    && r.getMessage().contains("rank " + s.targetRank() + " of 4")
                    && r.getMessage().contains("rejected connection from /127.0.0.1:" + localPort + ":")
                    && r.getMessage().contains(reason));
            assertTrue(logged, "no rejection log for " + s.kind() + " on rank " + s.targetRank() + " from port " + localPort
                    + "; records: " + records.stream().map(LogRecord::getMessage).toList());
        }
    }

    @Test
    void logsNeverContainTheSecret() throws Exception {
        JobSecret secret = JobSecret.generate();
        List<Stranger> strangers = java.util.Collections.synchronizedList(new ArrayList<>());
        run(true, strangers, secret);
        for (Stranger s : strangers) {
            s.socket().close();
        }
        String hex = java.util.HexFormat.of().formatHex(java.util.Base64.getDecoder().decode(secret.encode()));
        for (LogRecord r : records) {
            assertTrue(!r.getMessage().contains(secret.encode()) && !r.getMessage().contains(hex), r.getMessage());
        }
    }
}

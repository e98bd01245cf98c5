package dev.sparkmoe.gpu.comm;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.function.IntFunction;

/** Runs ranks as threads of the test JVM, on loopback. */
final class TcpHarness {

    static final String HOST = "127.0.0.1";

    private TcpHarness() {
    }

    /** A currently free loopback port (bind-then-release; collisions are retried by callers only if needed). */
    static int freePort() {
        try (ServerSocket s = new ServerSocket()) {
            s.setReuseAddress(true);
            s.bind(new InetSocketAddress(InetAddress.getByName(HOST), 0));
            return s.getLocalPort();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    static TcpRendezvous.Builder rendezvous(int n, int rank, int port, JobSecret secret) {
        return TcpRendezvous.builder()
                .worldSize(n)
                .rank(rank)
                .rank0(HOST, port)
                .listenHost(HOST)
                .secret(secret)
                .connectTimeout(Duration.ofSeconds(20))
                .collectiveTimeout(Duration.ofSeconds(20))
                .handshakeTimeout(Duration.ofMillis(500));
    }

    interface RankBody<T> {
        T run(int rank) throws Exception;
    }

    /** Outcome of one rank: a value or the exception it threw. */
    record Outcome<T>(T value, Throwable error) {
    }

    /** Runs {@code body} for ranks 0..n-1 concurrently; waits at most {@code limit}. */
    static <T> List<Outcome<T>> runRanks(int n, Duration limit, RankBody<T> body) {
        return runRanks(n, limit, body, () -> { });
    }

    /** As above, with {@code sidecar} running concurrently in one more thread (e.g. strangers knocking). */
    static <T> List<Outcome<T>> runRanks(int n, Duration limit, RankBody<T> body, Runnable sidecar) {
        ExecutorService pool = Executors.newFixedThreadPool(n + 1);
        try {
            pool.submit(sidecar);
            List<Future<T>> fs = new ArrayList<>();
            for (int r = 0; r < n; r++) {
                int rank = r;
                fs.add(pool.submit(() -> body.run(rank)));
            }
            List<Outcome<T>> out = new ArrayList<>();
            long deadline = System.nanoTime() + limit.toNanos();
            for (Future<T> f : fs) {
                try {
                    out.add(new Outcome<>(f.get(Math.max(1, deadline - System.nanoTime()), TimeUnit.NANOSECONDS), null));
                } catch (ExecutionException e) {
                    out.add(new Outcome<>(null, e.getCause()));
                } catch (TimeoutException e) {
                    throw new AssertionError("ranks hung for more than " + limit);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new AssertionError(e);
                }
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }

    static <T> List<T> values(List<Outcome<T>> outs) {
        List<T> v = new ArrayList<>();
        for (int r = 0; r < outs.size(); r++) {
            if (outs.get(r).error() != null) {
                AssertionError e = new AssertionError("rank " + r + " failed: " + outs.get(r).error());
                e.initCause(outs.get(r).error());
                throw e;
            }
            v.add(outs.get(r).value());
        }
        return v;
    }

    /** Connects n thread ranks and runs {@code body} with each communicator (closed afterwards). */
    static <T> List<Outcome<T>> withWorld(int n, IntFunction<TcpRendezvous> rv, Duration limit,
                                          java.util.function.Function<TcpCommunicator, T> body) {
        return runRanks(n, limit, rank -> {
            try (TcpCommunicator c = TcpCommunicator.connect(rv.apply(rank))) {
                return body.apply(c);
            }
        });
    }
}

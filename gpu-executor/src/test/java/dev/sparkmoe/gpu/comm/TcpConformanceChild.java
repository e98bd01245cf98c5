package dev.sparkmoe.gpu.comm;

import dev.sparkmoe.parallel.comm.CollectiveTimeoutException;

/**
 * One rank of the multi-process tests: reads its {@link TcpRendezvous} (and the job secret) from the environment,
 * runs the conformance suite, prints {@code DIGEST <hex>} and exits 0; any failure prints to stderr and exits 1.
 * Mode (environment variable {@code TCP_CHILD_MODE}): {@code conformance} (default), {@code idle} (join, then never
 * call a collective), {@code expect-timeout} (one all-reduce that must time out naming {@code TCP_CHILD_MISSING}).
 */
public final class TcpConformanceChild {

    private TcpConformanceChild() {
    }

    public static void main(String[] args) {
        int code = 1;
        try {
            code = run();
        } catch (Throwable t) {
            t.printStackTrace();
        }
        System.out.flush();
        System.err.flush();
        Runtime.getRuntime().halt(code);
    }

    private static int run() throws Exception {
        String mode = System.getenv().getOrDefault("TCP_CHILD_MODE", "conformance");
        TcpRendezvous r = TcpRendezvous.fromEnvironment();
        try (TcpCommunicator c = TcpCommunicator.connect(r)) {
            switch (mode) {
                case "conformance" -> {
                    String digest = TcpChecks.runAll(c);
                    System.out.println("DIGEST " + digest);
                    return 0;
                }
                case "idle" -> {
                    Thread.sleep(Long.parseLong(System.getenv().getOrDefault("TCP_CHILD_IDLE_MS", "10000")));
                    return 0;
                }
                case "expect-timeout" -> {
                    long t0 = System.nanoTime();
                    try {
                        c.allReduceSum(new float[16], 0, 16);
                        System.err.println("allReduceSum completed although a rank never called it");
                        return 1;
                    } catch (CollectiveTimeoutException e) {
                        long ms = (System.nanoTime() - t0) / 1_000_000;
                        String missing = "missing rank " + System.getenv("TCP_CHILD_MISSING") + " ";
                        if (!e.getMessage().contains(missing)) {
                            System.err.println("timeout message does not name '" + missing + "': " + e.getMessage());
                            return 1;
                        }
                        System.out.println("TIMEOUT after " + ms + " ms: " + e.getMessage());
                        return 0;
                    }
                }
                default -> {
                    System.err.println("unknown TCP_CHILD_MODE " + mode);
                    return 2;
                }
            }
        }
    }
}

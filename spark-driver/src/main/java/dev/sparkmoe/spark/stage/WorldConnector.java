package dev.sparkmoe.spark.stage;

import dev.sparkmoe.gpu.comm.JobSecret;
import dev.sparkmoe.gpu.comm.TcpCommunicator;
import dev.sparkmoe.gpu.comm.TcpRendezvous;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.InJvmWorld;
import java.io.IOException;
import java.io.Serializable;
import java.lang.management.ManagementFactory;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.time.Duration;
import java.util.Arrays;

/**
 * Builds the world communicator of a rank. The ranks first tell each other which JVM they run in (through the
 * barrier stage's allGather): when they all share one JVM (Spark local mode) they meet in an {@link InJvmWorld}
 * registered under the stage attempt's key; otherwise rank 0 opens a TCP port, advertises host:port through
 * allGather, and every rank joins a {@link TcpCommunicator} authenticated by the job secret that the driver generated
 * and shipped in the task closure. The key is unique per stage attempt, so a zombie task of a failed attempt can never
 * join a new attempt's world. {@link #toString()} never shows the secret.
 */
public final class WorldConnector implements Serializable {
    private static final long serialVersionUID = 1L;

    /** Which transport to use. */
    public enum Mode { AUTO, IN_JVM, TCP }

    private final Mode mode;
    private final String encodedSecret;

    public WorldConnector(Mode mode, JobSecret secret) {
        this.mode = mode;
        this.encodedSecret = secret.encode();
    }

    /** What one rank reports in the rendezvous round. */
    public static String whereAmI() {
        String host;
        try {
            host = InetAddress.getLocalHost().getHostName();
        } catch (IOException e) {
            host = "unknown-host";
        }
        return host + "/" + ManagementFactory.getRuntimeMXBean().getPid();
    }

    /**
     * Collective. {@code where} holds every rank's {@link #whereAmI()} answer, gathered by the caller (it shares
     * that round with other start-up facts: each barrier-context round trip costs about a second).
     */
    public Communicator connect(RankControl ctl, String[] where, Duration timeout) {
        int rank = ctl.rank();
        int size = ctl.worldSize();
        boolean oneJvm = Arrays.stream(where).distinct().count() == 1;
        Mode m = mode == Mode.AUTO ? (oneJvm ? Mode.IN_JVM : Mode.TCP) : mode;
        if (m == Mode.IN_JVM) {
            if (!oneJvm) {
                throw new IllegalStateException("the in-JVM communicator needs every rank in one JVM, but the ranks "
                        + "run in " + Arrays.toString(where) + "; use the TCP transport (mode AUTO or TCP)");
            }
            return InJvmWorld.join(ctl.jobKey(), size, timeout).rank(rank);
        }
        String hostPort = "";
        if (rank == 0) {
            try (ServerSocket probe = new ServerSocket(0)) {
                hostPort = InetAddress.getLocalHost().getHostAddress() + ":" + probe.getLocalPort();
            } catch (IOException e) {
                throw new IllegalStateException("rank 0 could not find a free TCP port: " + e.getMessage(), e);
            }
        }
        String rank0 = ctl.allGather(hostPort)[0];
        int colon = rank0.lastIndexOf(':');
        TcpRendezvous r = TcpRendezvous.builder().worldSize(size).rank(rank)
                .rank0(rank0.substring(0, colon), Integer.parseInt(rank0.substring(colon + 1)))
                .connectTimeout(timeout).collectiveTimeout(timeout)
                .secret(JobSecret.decode(encodedSecret)).name("world").build();
        return TcpCommunicator.connect(r);
    }

    /** Tells the other ranks of an in-JVM world that this one failed, so that nobody waits for it. */
    static void abort(Communicator c, int rank, Throwable cause) {
        if (c instanceof dev.sparkmoe.parallel.comm.InJvmCommunicator ic) {
            ic.abort(cause);
        }
    }

    @Override
    public String toString() {
        return "WorldConnector[" + mode + ", secret=<redacted>]";
    }
}

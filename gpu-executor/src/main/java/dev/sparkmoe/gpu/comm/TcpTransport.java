package dev.sparkmoe.gpu.comm;

import dev.sparkmoe.parallel.comm.CollectiveTimeoutException;
import dev.sparkmoe.parallel.comm.CommunicatorException;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.ConnectException;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketAddress;
import java.net.SocketTimeoutException;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.SynchronousQueue;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * The connections of one rank of a TCP job: bootstrap of a full mesh of authenticated sockets ({@link TcpHandshake}),
 * one {@link Link} per peer (reader and writer threads, per-(group, peer) mailboxes that collectives wait on), and
 * close. The listening socket stays open for the whole job so that strangers can be turned away (and logged) while
 * the job runs.
 *
 * <p>Bootstrap: rank 0 listens on the rendezvous address; every other rank listens on a port of its own, joins rank 0
 * (sending that address) and receives the address table once all have joined (or the reason it was aborted); then
 * rank j connects to ranks 1..j-1 and waits for ranks above it to connect. Every wait names the ranks still missing
 * at the connect timeout.
 */
final class TcpTransport {

    static final Logger LOG = Logger.getLogger(TcpCommunicator.class.getName());

    private static final byte BOOT_TABLE = 1;
    private static final byte BOOT_ABORT = 2;
    private static final int MAX_PENDING_HANDSHAKES = 64;
    private static final long BOOTSTRAP_GRACE_MS = 2000;
    private static final long CLOSE_LINGER_MS = 2000;
    private static final AtomicInteger THREAD_IDS = new AtomicInteger();

    final int rank;
    final int size;
    final String name;
    final long collectiveTimeoutNanos;
    private final TcpHandshake handshake;
    private final Link[] links;
    private final Link self;
    private ServerSocket server;
    private Thread acceptor;
    private final ThreadPoolExecutor handshakes;
    private volatile boolean closed;
    private volatile boolean bootstrapped;
    // rank 0 only: JOIN connections awaiting the address table
    private final Joined[] joined;

    private record Joined(Socket socket, DataInputStream in, DataOutputStream out, String host, int port) {
    }

    private TcpTransport(TcpRendezvous r) {
        this.rank = r.rank();
        this.size = r.worldSize();
        this.name = r.name();
        this.collectiveTimeoutNanos = r.collectiveTimeout().toNanos();
        this.handshake = new TcpHandshake(this, r.secret(),
                (int) Math.min(Integer.MAX_VALUE, r.handshakeTimeout().toMillis()));
        this.links = new Link[size];
        this.self = new Link(this, rank, null, null, null, null);
        this.links[rank] = self;
        this.joined = new Joined[size];
        this.handshakes = new ThreadPoolExecutor(0, MAX_PENDING_HANDSHAKES, 30, TimeUnit.SECONDS,
                new SynchronousQueue<>(), runnable -> daemon(runnable, "handshake"));
    }

    Thread daemon(Runnable runnable, String what) {
        Thread t = new Thread(runnable, "tcp-comm-" + name + "-r" + rank + "-" + what + "-" + THREAD_IDS.incrementAndGet());
        t.setDaemon(true);
        return t;
    }

    String who() {
        return "'" + name + "' rank " + rank + " of " + size;
    }

    // ------------------------------------------------------------------------------------------------ bootstrap

    static TcpTransport connect(TcpRendezvous r) {
        TcpTransport t = new TcpTransport(r);
        try {
            t.bootstrap(r);
            return t;
        } catch (RuntimeException e) {
            t.close();
            throw e;
        }
    }

    private void bootstrap(TcpRendezvous r) {
        if (size == 1) {
            bootstrapped = true;
            return;
        }
        long timeoutMs = r.connectTimeout().toMillis();
        long deadline = System.nanoTime() + r.connectTimeout().toNanos();
        if (rank == 0) {
            listen(new InetSocketAddress(r.rank0Host(), r.rank0Port()));
            awaitJoins(deadline, timeoutMs);
            sendTable();
        } else {
            TcpHandshake.Conn c = connectWithRetry(0, new InetSocketAddress(r.rank0Host(), r.rank0Port()), deadline, timeoutMs);
            Socket s = c.socket();
            try {
                String listenHost = r.listenHost() != null ? r.listenHost() : s.getLocalAddress().getHostAddress();
                listen(new InetSocketAddress(listenHost, 0));
                DataOutputStream out = c.out();
                DataInputStream in = c.in();
                out.writeByte(TcpHandshake.INTENT_JOIN);
                out.writeUTF(listenHost);
                out.writeInt(server.getLocalPort());
                out.flush();
                List<InetSocketAddress> table = readTable(s, in, deadline, timeoutMs);
                s.setSoTimeout(0);
                register(new Link(this, 0, s, in, out, s.getRemoteSocketAddress()));
                long meshDeadline = System.nanoTime() + r.connectTimeout().toNanos();
                for (int j = 1; j < rank; j++) {
                    TcpHandshake.Conn m = connectWithRetry(j, table.get(j), meshDeadline, timeoutMs);
                    m.out().writeByte(TcpHandshake.INTENT_MESH);
                    m.out().flush();
                    m.socket().setSoTimeout(0);
                    register(new Link(this, j, m.socket(), m.in(), m.out(), m.socket().getRemoteSocketAddress()));
                }
                awaitMesh(meshDeadline, timeoutMs);
            } catch (IOException e) {
                closeQuietly(s);
                throw new CommunicatorException(who() + ": bootstrap failed talking to rank 0 at " + r.rank0Host() + ":"
                        + r.rank0Port() + ": " + e, e);
            }
        }
        bootstrapped = true;
        LOG.fine(() -> who() + ": connected to all " + (size - 1) + " peers");
    }

    private void listen(InetSocketAddress at) {
        try {
            server = new ServerSocket();
            server.setReuseAddress(true);
            server.bind(at, 128);
        } catch (IOException e) {
            throw new CommunicatorException(who() + ": cannot listen on " + at + ": " + e
                    + (rank == 0 ? "; hint: is the rank 0 port already in use?" : ""), e);
        }
        acceptor = daemon(this::acceptLoop, "accept");
        acceptor.start();
    }

    /** Address this rank listens on (null for a world of one). */
    InetSocketAddress listenAddress() {
        ServerSocket s = server;
        return s == null ? null : (InetSocketAddress) s.getLocalSocketAddress();
    }

    private List<InetSocketAddress> readTable(Socket s, DataInputStream in, long deadline, long timeoutMs) throws IOException {
        // wait a little past our own deadline so that rank 0's verdict (naming the missing ranks) reaches us
        long waitMs = Math.max(1, TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime()) + BOOTSTRAP_GRACE_MS);
        s.setSoTimeout((int) Math.min(Integer.MAX_VALUE, waitMs));
        byte kind;
        try {
            kind = in.readByte();
        } catch (SocketTimeoutException e) {
            throw new CollectiveTimeoutException(who() + ": bootstrap timed out after " + timeoutMs
                    + " ms waiting for rank 0's address table (rank 0 is waiting for other ranks to join)");
        } catch (EOFException e) {
            throw new CommunicatorException(who() + ": rank 0 closed the connection during bootstrap");
        }
        if (kind == BOOT_ABORT) {
            String why = in.readUTF();
            throw new CollectiveTimeoutException(who() + ": bootstrap aborted by rank 0: " + why);
        }
        if (kind != BOOT_TABLE) {
            throw new CommunicatorException(who() + ": unexpected bootstrap message " + kind + " from rank 0");
        }
        int n = in.readInt();
        if (n != size) {
            throw new CommunicatorException(who() + ": rank 0 says the world has " + n + " ranks but this rank was told "
                    + size + "; hint: every rank must be launched with the same world size");
        }
        List<InetSocketAddress> table = new ArrayList<>(n);
        for (int i = 0; i < n; i++) {
            String host = in.readUTF();
            int port = in.readInt();
            table.add(new InetSocketAddress(host, port));
        }
        return table;
    }

    private void awaitJoins(long deadline, long timeoutMs) {
        synchronized (this) {
            while (true) {
                List<Integer> missing = new ArrayList<>();
                for (int k = 1; k < size; k++) {
                    if (joined[k] == null) {
                        missing.add(k);
                    }
                }
                if (missing.isEmpty()) {
                    return;
                }
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    String msg = "bootstrap of '" + name + "' timed out after " + timeoutMs + " ms: ranks " + missing
                            + " did not join rank 0";
                    for (Joined j : joined) {
                        if (j != null) {
                            try {
                                j.out.writeByte(BOOT_ABORT);
                                j.out.writeUTF(msg);
                                j.out.flush();
                            } catch (IOException ignored) {
                                // the peer learns through its own timeout
                            }
                        }
                    }
                    throw new CollectiveTimeoutException(who() + ": " + msg);
                }
                waitNanos(left);
            }
        }
    }

    private void sendTable() {
        InetSocketAddress mine = listenAddress();
        for (int k = 1; k < size; k++) {
            Joined j = joined[k];
            try {
                j.out.writeByte(BOOT_TABLE);
                j.out.writeInt(size);
                j.out.writeUTF(mine.getAddress().getHostAddress());
                j.out.writeInt(mine.getPort());
                for (int i = 1; i < size; i++) {
                    j.out.writeUTF(joined[i].host);
                    j.out.writeInt(joined[i].port);
                }
                j.out.flush();
                j.socket.setSoTimeout(0);
            } catch (IOException e) {
                throw new CommunicatorException(who() + ": rank " + k + " dropped during bootstrap: " + e, e);
            }
        }
        for (int k = 1; k < size; k++) {
            Joined j = joined[k];
            register(new Link(this, k, j.socket, j.in, j.out, j.socket.getRemoteSocketAddress()));
        }
    }

    private void awaitMesh(long deadline, long timeoutMs) {
        synchronized (this) {
            while (true) {
                List<Integer> missing = new ArrayList<>();
                for (int k = 0; k < size; k++) {
                    if (links[k] == null) {
                        missing.add(k);
                    }
                }
                if (missing.isEmpty()) {
                    return;
                }
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    throw new CollectiveTimeoutException(who() + ": bootstrap of '" + name + "' timed out after " + timeoutMs
                            + " ms: ranks " + missing + " did not connect to this rank");
                }
                waitNanos(left);
            }
        }
    }

    private void waitNanos(long nanos) {
        try {
            TimeUnit.NANOSECONDS.timedWait(this, Math.min(nanos, TimeUnit.MILLISECONDS.toNanos(100)));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new CommunicatorException(who() + ": interrupted during bootstrap");
        }
    }

    private TcpHandshake.Conn connectWithRetry(int peer, InetSocketAddress addr, long deadline, long timeoutMs) {
        long backoffMs = 20;
        IOException last = null;
        while (!closed) {
            long leftMs = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
            if (leftMs <= 0) {
                break;
            }
            Socket s = new Socket();
            try {
                s.connect(addr, (int) Math.min(leftMs, Integer.MAX_VALUE));
                return handshake.client(s, peer, addr);
            } catch (ConnectException | SocketTimeoutException e) {
                closeQuietly(s);
                last = e;
            } catch (IOException e) {
                closeQuietly(s);
                throw new CommunicatorException(who() + ": handshake with rank " + peer + " at " + addr + " failed: " + e
                        + "; hint: do both ranks hold the same job secret?", e);
            } catch (RuntimeException e) {
                closeQuietly(s);
                throw e;
            }
            sleepMs(Math.min(backoffMs, Math.max(1, leftMs)));
            backoffMs = Math.min(500, backoffMs * 2);
        }
        throw new CollectiveTimeoutException(who() + ": could not connect to rank " + peer + " at " + addr + " within "
                + timeoutMs + " ms" + (last != null ? " (last error: " + last.getMessage() + ")" : ""));
    }

    private static void sleepMs(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new CommunicatorException("interrupted while connecting");
        }
    }

    // ------------------------------------------------------------------------------------------------ accepting

    private void acceptLoop() {
        while (!closed) {
            Socket s;
            try {
                s = server.accept();
            } catch (IOException e) {
                if (!closed) {
                    LOG.log(Level.WARNING, who() + ": accept failed: " + e);
                }
                return;
            }
            try {
                handshakes.execute(() -> handshake.serve(s));
            } catch (RejectedExecutionException e) {
                reject(s, "too many pending handshakes (" + MAX_PENDING_HANDSHAKES + ")");
            }
        }
    }

    /** Closes a connection that is not (or no longer) welcome, and logs why. */
    void reject(Socket s, String reason) {
        LOG.warning(who() + ": rejected connection from " + s.getRemoteSocketAddress() + ": " + reason);
        closeQuietly(s);
    }

    /** What an authenticated peer asked for: to join (rank 0, during bootstrap) or to complete the mesh. */
    void admit(Socket s, DataInputStream in, DataOutputStream out, SocketAddress remote, int clientRank, byte intent)
            throws IOException {
        if (intent == TcpHandshake.INTENT_JOIN && rank == 0) {
            String host = in.readUTF();
            int port = in.readInt();
            s.setSoTimeout(0);
            synchronized (this) {
                if (bootstrapped || joined[clientRank] != null) {
                    reject(s, "rank " + clientRank + " tried to join twice or after bootstrap completed");
                    return;
                }
                joined[clientRank] = new Joined(s, in, out, host, port);
                notifyAll();
            }
        } else if (intent == TcpHandshake.INTENT_MESH && clientRank > rank && rank != 0) {
            s.setSoTimeout(0);
            synchronized (this) {
                if (links[clientRank] != null) {
                    reject(s, "duplicate connection from rank " + clientRank);
                    return;
                }
                register(new Link(this, clientRank, s, in, out, remote));
            }
        } else {
            reject(s, "authenticated rank " + clientRank + " sent unexpected intent " + intent);
        }
    }

    static void closeQuietly(Socket s) {
        try {
            s.close();
        } catch (IOException ignored) {
            // closing
        }
    }

    // ------------------------------------------------------------------------------------------------ links

    private synchronized void register(Link l) {
        links[l.peer] = l;
        l.start();
        notifyAll();
    }

    /** The link to world rank {@code peer} (this rank's own link loops back locally). */
    Link link(int peer) {
        return links[peer];
    }

    Link self() {
        return self;
    }

    boolean isClosed() {
        return closed;
    }

    /** Says goodbye to every peer, waits briefly for them to do the same, closes everything. Idempotent. */
    void close() {
        synchronized (this) {
            if (closed) {
                return;
            }
            closed = true;
            notifyAll();
        }
        if (server != null) {
            try {
                server.close();
            } catch (IOException ignored) {
                // closing
            }
        }
        handshakes.shutdownNow();
        for (Joined j : joined) {
            if (j != null && !bootstrapped) {
                closeQuietly(j.socket);
            }
        }
        Link[] snapshot;
        synchronized (this) {
            snapshot = links.clone();
        }
        for (Link l : snapshot) {
            if (l != null) {
                l.beginClose();
            }
        }
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(CLOSE_LINGER_MS);
        for (Link l : snapshot) {
            if (l != null) {
                l.finishClose(deadline);
            }
        }
    }
}
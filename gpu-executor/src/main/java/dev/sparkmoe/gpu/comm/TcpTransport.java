package dev.sparkmoe.gpu.comm;

import dev.sparkmoe.parallel.comm.CollectiveTimeoutException;
import dev.sparkmoe.parallel.comm.CommunicatorException;
import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.net.ConnectException;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketAddress;
import java.net.SocketException;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.SynchronousQueue;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * The connections of one rank of a TCP job: a full mesh of authenticated sockets, one reader and one writer thread
 * per peer, and per-(group, peer) mailboxes that collectives wait on. The listening socket stays open for the
 * whole job so that strangers can be turned away (and logged) while the job runs.
 *
 * <p>Handshake (both directions proven, the secret never travels):
 * <pre>
 *   server -> client : MAGIC(8) | int serverRank | nonceS(32)
 *   client -> server : MAGIC(8) | int clientRank | nonceC(32) | HMAC(secret, nonceS || clientRank || "spark-moe")
 *   server -> client : HMAC(secret, nonceC || nonceS || serverRank || "spark-moe-server")
 *   client -> server : intent: JOIN (to rank 0: listen host, port) or MESH
 * </pre>
 * A connection that fails any step, or sends nothing within the handshake timeout, is closed and logged.
 */
final class TcpTransport {

    static final Logger LOG = Logger.getLogger(TcpCommunicator.class.getName());

    private static final byte[] MAGIC = "SPKMOE\u0000\u0001".getBytes(StandardCharsets.ISO_8859_1);
    private static final byte[] CLIENT_LABEL = "spark-moe".getBytes(StandardCharsets.US_ASCII);
    private static final byte[] SERVER_LABEL = "spark-moe-server".getBytes(StandardCharsets.US_ASCII);
    private static final int NONCE_BYTES = 32;
    private static final byte INTENT_JOIN = 1;
    private static final byte INTENT_MESH = 2;
    private static final byte BOOT_TABLE = 1;
    private static final byte BOOT_ABORT = 2;
    private static final int MAX_PENDING_HANDSHAKES = 64;
    private static final long BOOTSTRAP_GRACE_MS = 2000;
    private static final long CLOSE_LINGER_MS = 2000;
    private static final SecureRandom RANDOM = new SecureRandom();
    private static final AtomicInteger THREAD_IDS = new AtomicInteger();

    final int rank;
    final int size;
    final String name;
    final long collectiveTimeoutNanos;
    private final JobSecret secret;
    private final int handshakeMs;
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

    /** An authenticated client connection with the streams used for its handshake (which may hold buffered bytes). */
    private record Conn(Socket socket, DataInputStream in, DataOutputStream out) {
    }

    private TcpTransport(TcpRendezvous r) {
        this.rank = r.rank();
        this.size = r.worldSize();
        this.name = r.name();
        this.collectiveTimeoutNanos = r.collectiveTimeout().toNanos();
        this.secret = r.secret();
        this.handshakeMs = (int) Math.min(Integer.MAX_VALUE, r.handshakeTimeout().toMillis());
        this.links = new Link[size];
        this.self = new Link(rank, null, null, null, null);
        this.links[rank] = self;
        this.joined = new Joined[size];
        this.handshakes = new ThreadPoolExecutor(0, MAX_PENDING_HANDSHAKES, 30, TimeUnit.SECONDS,
                new SynchronousQueue<>(), runnable -> daemon(runnable, "handshake"));
    }

    private Thread daemon(Runnable runnable, String what) {
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
            Conn c = connectWithRetry(0, new InetSocketAddress(r.rank0Host(), r.rank0Port()), deadline, timeoutMs);
            Socket s = c.socket();
            try {
                String listenHost = r.listenHost() != null ? r.listenHost() : s.getLocalAddress().getHostAddress();
                listen(new InetSocketAddress(listenHost, 0));
                DataOutputStream out = c.out();
                DataInputStream in = c.in();
                out.writeByte(INTENT_JOIN);
                out.writeUTF(listenHost);
                out.writeInt(server.getLocalPort());
                out.flush();
                List<InetSocketAddress> table = readTable(s, in, deadline, timeoutMs);
                s.setSoTimeout(0);
                register(new Link(0, s, in, out, s.getRemoteSocketAddress()));
                long meshDeadline = System.nanoTime() + r.connectTimeout().toNanos();
                for (int j = 1; j < rank; j++) {
                    Conn m = connectWithRetry(j, table.get(j), meshDeadline, timeoutMs);
                    m.out().writeByte(INTENT_MESH);
                    m.out().flush();
                    m.socket().setSoTimeout(0);
                    register(new Link(j, m.socket(), m.in(), m.out(), m.socket().getRemoteSocketAddress()));
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
            register(new Link(k, j.socket, j.in, j.out, j.socket.getRemoteSocketAddress()));
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

    private Conn connectWithRetry(int peer, InetSocketAddress addr, long deadline, long timeoutMs) {
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
                return clientHandshake(s, peer, addr);
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

    // ------------------------------------------------------------------------------------------------ handshake

    private Conn clientHandshake(Socket s, int expectedPeer, InetSocketAddress addr) throws IOException {
        s.setTcpNoDelay(true);
        s.setSoTimeout(handshakeMs);
        DataInputStream in = dataIn(s);
        DataOutputStream out = dataOut(s);
        byte[] magic = new byte[MAGIC.length];
        int serverRank;
        byte[] nonceS = new byte[NONCE_BYTES];
        try {
            in.readFully(magic);
            if (!MessageDigest.isEqual(magic, MAGIC)) {
                throw new CommunicatorException(who() + ": " + addr + " (expected rank " + expectedPeer
                        + ") is not a spark-moe rank (bad greeting)");
            }
            serverRank = in.readInt();
            in.readFully(nonceS);
        } catch (EOFException e) {
            throw new CommunicatorException(who() + ": " + addr + " (expected rank " + expectedPeer
                    + ") closed the connection before greeting");
        }
        if (serverRank != expectedPeer) {
            throw new CommunicatorException(who() + ": " + addr + " says it is rank " + serverRank + " but rank "
                    + expectedPeer + " was expected there; hint: stale address table or two jobs sharing ports");
        }
        byte[] nonceC = new byte[NONCE_BYTES];
        RANDOM.nextBytes(nonceC);
        out.write(MAGIC);
        out.writeInt(rank);
        out.write(nonceC);
        out.write(secret.hmac(nonceS, intBytes(rank), CLIENT_LABEL));
        out.flush();
        byte[] proof = new byte[32];
        try {
            in.readFully(proof);
        } catch (EOFException | SocketException e) {
            throw new CommunicatorException(who() + ": rank " + expectedPeer + " at " + addr
                    + " refused our authentication; hint: every rank must hold the same job secret");
        }
        if (!MessageDigest.isEqual(proof, secret.hmac(nonceC, nonceS, intBytes(serverRank), SERVER_LABEL))) {
            throw new CommunicatorException(who() + ": the listener at " + addr + " failed to prove it holds the job "
                    + "secret (claims rank " + serverRank + "); refusing to talk to it");
        }
        return new Conn(s, in, out);
    }

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
                handshakes.execute(() -> serverHandshake(s));
            } catch (RejectedExecutionException e) {
                reject(s, "too many pending handshakes (" + MAX_PENDING_HANDSHAKES + ")");
            }
        }
    }

    private void reject(Socket s, String reason) {
        LOG.warning(who() + ": rejected connection from " + s.getRemoteSocketAddress() + ": " + reason);
        closeQuietly(s);
    }

    private void serverHandshake(Socket s) {
        SocketAddress remote = s.getRemoteSocketAddress();
        int got = 0;
        try {
            s.setTcpNoDelay(true);
            s.setSoTimeout(handshakeMs);
            DataOutputStream out = dataOut(s);
            CountingInput counting = new CountingInput(s.getInputStream());
            DataInputStream in = new DataInputStream(new BufferedInputStream(counting, 1 << 16));
            byte[] nonceS = new byte[NONCE_BYTES];
            RANDOM.nextBytes(nonceS);
            out.write(MAGIC);
            out.writeInt(rank);
            out.write(nonceS);
            out.flush();
            byte[] magic = new byte[MAGIC.length];
            try {
                in.readFully(magic);
                if (!MessageDigest.isEqual(magic, MAGIC)) {
                    reject(s, "not a spark-moe peer (bad greeting)");
                    return;
                }
                int clientRank = in.readInt();
                byte[] nonceC = new byte[NONCE_BYTES];
                in.readFully(nonceC);
                byte[] proof = new byte[32];
                in.readFully(proof);
                if (!MessageDigest.isEqual(proof, secret.hmac(nonceS, intBytes(clientRank), CLIENT_LABEL))) {
                    reject(s, "authentication failed (claimed rank " + clientRank + "; wrong job secret?)");
                    return;
                }
                if (clientRank < 0 || clientRank >= size || clientRank == rank) {
                    reject(s, "authenticated but claims invalid rank " + clientRank + " (world size " + size + ")");
                    return;
                }
                out.write(secret.hmac(nonceC, nonceS, intBytes(rank), SERVER_LABEL));
                out.flush();
                byte intent = in.readByte();
                if (intent == INTENT_JOIN && rank == 0) {
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
                } else if (intent == INTENT_MESH && clientRank > rank && rank != 0) {
                    s.setSoTimeout(0);
                    synchronized (this) {
                        if (links[clientRank] != null) {
                            reject(s, "duplicate connection from rank " + clientRank);
                            return;
                        }
                        register(new Link(clientRank, s, in, out, remote));
                    }
                } else {
                    reject(s, "authenticated rank " + clientRank + " sent unexpected intent " + intent);
                }
            } catch (SocketTimeoutException e) {
                got = counting.count;
                reject(s, "handshake timed out after " + handshakeMs + " ms"
                        + (got == 0 ? " (silent connection)" : " (" + got + " bytes received)"));
            } catch (EOFException | SocketException e) {
                reject(s, "connection closed during handshake (" + counting.count + " bytes received)");
            }
        } catch (IOException e) {
            reject(s, "I/O error during handshake: " + e);
        } catch (RuntimeException e) {
            reject(s, "error during handshake: " + e);
        }
    }

    private static final class CountingInput extends InputStream {
        private final InputStream in;
        volatile int count;

        CountingInput(InputStream in) {
            this.in = in;
        }

        @Override
        public int read() throws IOException {
            int b = in.read();
            if (b >= 0) {
                count++;
            }
            return b;
        }

        @Override
        public int read(byte[] b, int off, int len) throws IOException {
            int n = in.read(b, off, len);
            if (n > 0) {
                count += n;
            }
            return n;
        }
    }

    private static byte[] intBytes(int v) {
        return ByteBuffer.allocate(4).putInt(v).array();
    }

    private static DataOutputStream dataOut(Socket s) throws IOException {
        return new DataOutputStream(new BufferedOutputStream(s.getOutputStream(), 1 << 16));
    }

    private static DataInputStream dataIn(Socket s) throws IOException {
        return new DataInputStream(new BufferedInputStream(s.getInputStream(), 1 << 16));
    }

    private static void closeQuietly(Socket s) {
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

    record StreamKey(long group, boolean p2p) {
    }

    private static final Frame CLOSE_MARKER = new Frame(-1, -1, (byte) 0, (byte) 0, 0, false, new byte[0]);

    /** One peer: socket, reader and writer threads, mailboxes per stream. */
    final class Link {
        final int peer;
        private final Socket socket;
        private final DataInputStream in;
        private final DataOutputStream out;
        private final SocketAddress remote;
        private final LinkedBlockingQueue<Frame> outbox = new LinkedBlockingQueue<>();
        private final Map<StreamKey, LinkedBlockingQueue<Frame>> boxes = new ConcurrentHashMap<>();
        private volatile String failure;
        private volatile boolean peerSaidBye;
        private Thread reader;
        private Thread writer;

        Link(int peer, Socket socket, DataInputStream in, DataOutputStream out, SocketAddress remote) {
            this.peer = peer;
            this.socket = socket;
            this.in = in;
            this.out = out;
            this.remote = remote;
        }

        void start() {
            reader = daemon(this::readLoop, "read-from-" + peer);
            writer = daemon(this::writeLoop, "write-to-" + peer);
            reader.start();
            writer.start();
        }

        /** Why this link is unusable, or null. */
        String failure() {
            return failure;
        }

        LinkedBlockingQueue<Frame> box(StreamKey k) {
            return boxes.computeIfAbsent(k, x -> new LinkedBlockingQueue<>());
        }

        void dropBoxes(long group) {
            boxes.keySet().removeIf(k -> k.group() == group);
        }

        /** Queues a frame for sending; never blocks. */
        void post(Frame f) {
            if (socket == null) {
                box(new StreamKey(f.group(), f.p2p())).add(f);
                return;
            }
            String why = failure;
            if (why != null) {
                throw new CommunicatorException(who() + ": cannot send to rank " + peer + ": " + why);
            }
            outbox.add(f);
        }

        private void writeLoop() {
            try {
                while (true) {
                    Frame f = outbox.take();
                    while (f != null) {
                        if (f == CLOSE_MARKER) {
                            out.flush();
                            socket.shutdownOutput();
                            return;
                        }
                        write(f);
                        f = outbox.poll();
                    }
                    out.flush();
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            } catch (IOException e) {
                fail("connection lost while sending (" + e.getMessage() + ")");
            }
        }

        private void write(Frame f) throws IOException {
            out.writeLong(f.group());
            out.writeLong(f.seq());
            out.writeByte(f.p2p() ? (f.op() | Frame.P2P_FLAG) : f.op());
            out.writeByte(f.phase());
            out.writeInt(f.aux());
            out.writeInt(f.payload().length);
            out.write(f.payload());
        }

        private void readLoop() {
            try {
                while (true) {
                    long group = in.readLong();
                    long seq = in.readLong();
                    byte op = in.readByte();
                    byte phase = in.readByte();
                    int aux = in.readInt();
                    int len = in.readInt();
                    if (len < 0) {
                        fail("corrupt frame from rank " + peer + " (length " + len + ")");
                        return;
                    }
                    byte[] payload = new byte[len];
                    in.readFully(payload);
                    if (group == Frame.CONTROL_GROUP && op == Frame.Op.BYE.code) {
                        peerSaidBye = true;
                        continue;
                    }
                    boolean p2p = (op & Frame.P2P_FLAG) != 0;
                    Frame f = new Frame(group, seq, (byte) (op & ~Frame.P2P_FLAG), phase, aux, p2p, payload);
                    box(new StreamKey(group, p2p)).add(f);
                }
            } catch (EOFException e) {
                fail(peerSaidBye ? "it closed its communicator" : "connection closed by peer (process exited or crashed?)");
            } catch (IOException e) {
                fail(peerSaidBye ? "it closed its communicator" : "connection lost (" + e.getMessage() + ")");
            }
        }

        private void fail(String why) {
            if (failure == null) {
                failure = why;
                if (!closed) {
                    LOG.log(peerSaidBye ? Level.FINE : Level.WARNING, who() + ": link to rank " + peer + " at " + remote
                            + " is down: " + why);
                }
            }
        }

        void beginClose() {
            if (socket != null && writer != null) {
                outbox.add(new Frame(Frame.CONTROL_GROUP, 0, Frame.Op.BYE.code, (byte) 0, 0, false, new byte[0]));
                outbox.add(CLOSE_MARKER);
            }
        }

        void finishClose(long deadlineNanos) {
            if (socket == null) {
                return;
            }
            try {
                if (writer != null) {
                    writer.join(Math.max(1, TimeUnit.NANOSECONDS.toMillis(deadlineNanos - System.nanoTime())));
                }
                if (reader != null) {
                    reader.join(Math.max(1, TimeUnit.NANOSECONDS.toMillis(deadlineNanos - System.nanoTime())));
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            if (failure == null) {
                failure = "this rank closed its communicator";
            }
            closeQuietly(socket);
            if (writer != null) {
                writer.interrupt();
            }
        }
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

package dev.sparkmoe.gpu.comm;

import dev.sparkmoe.parallel.comm.CommunicatorException;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.Socket;
import java.net.SocketAddress;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.logging.Level;

/**
 * One peer of a {@link TcpTransport}: its authenticated socket, a writer thread draining an outbox (so posting never
 * blocks) and a reader thread sorting incoming {@link Frame}s into one mailbox per stream ({@link StreamKey}: a group,
 * collective or point-to-point). A link goes down once, with the reason kept for the errors of the calls that wait on
 * it; closing says goodbye first, so that the peer can tell a close from a crash. A rank's link to itself has no
 * socket: what it posts lands in its own mailboxes.
 */
final class Link {

    /** A mailbox: the frames of one group, collective or point-to-point, from this link's peer. */
    record StreamKey(long group, boolean p2p) {
    }

    private static final Frame CLOSE_MARKER = new Frame(-1, -1, (byte) 0, (byte) 0, 0, false, new byte[0]);

    final int peer;
    private final TcpTransport transport;
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

    Link(TcpTransport transport, int peer, Socket socket, DataInputStream in, DataOutputStream out,
         SocketAddress remote) {
        this.transport = transport;
        this.peer = peer;
        this.socket = socket;
        this.in = in;
        this.out = out;
        this.remote = remote;
    }

    void start() {
        reader = transport.daemon(this::readLoop, "read-from-" + peer);
        writer = transport.daemon(this::writeLoop, "write-to-" + peer);
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
            throw new CommunicatorException(transport.who() + ": cannot send to rank " + peer + ": " + why);
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
            if (!transport.isClosed()) {
                TcpTransport.LOG.log(peerSaidBye ? Level.FINE : Level.WARNING, transport.who() + ": link to rank " + peer
                        + " at " + remote + " is down: " + why);
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
        TcpTransport.closeQuietly(socket);
        if (writer != null) {
            writer.interrupt();
        }
    }
}

package dev.sparkmoe.gpu.comm;

import dev.sparkmoe.parallel.comm.CommunicatorException;
import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketAddress;
import java.net.SocketException;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.SecureRandom;

/**
 * The authentication of a {@link TcpTransport}'s connections, both directions proven and the secret never sent:
 * <pre>
 *   server -> client : MAGIC(8) | int serverRank | nonceS(32)
 *   client -> server : MAGIC(8) | int clientRank | nonceC(32) | HMAC(secret, nonceS || clientRank || "spark-moe")
 *   server -> client : HMAC(secret, nonceC || nonceS || serverRank || "spark-moe-server")
 *   client -> server : intent: JOIN (to rank 0: listen host, port) or MESH
 * </pre>
 * The client side fails with an error naming the address and the step; the server side rejects (closes and logs) a
 * connection that fails any step or sends nothing within the handshake timeout, and hands the rest to the transport.
 */
final class TcpHandshake {

    static final byte INTENT_JOIN = 1;
    static final byte INTENT_MESH = 2;
    private static final byte[] MAGIC = "SPKMOE\u0000\u0001".getBytes(StandardCharsets.ISO_8859_1);
    private static final byte[] CLIENT_LABEL = "spark-moe".getBytes(StandardCharsets.US_ASCII);
    private static final byte[] SERVER_LABEL = "spark-moe-server".getBytes(StandardCharsets.US_ASCII);
    private static final int NONCE_BYTES = 32;
    private static final SecureRandom RANDOM = new SecureRandom();

    private final TcpTransport transport;
    private final JobSecret secret;
    private final int handshakeMs;

    /** An authenticated client connection with the streams used for its handshake (which may hold buffered bytes). */
    record Conn(Socket socket, DataInputStream in, DataOutputStream out) {
    }

    TcpHandshake(TcpTransport transport, JobSecret secret, int handshakeMs) {
        this.transport = transport;
        this.secret = secret;
        this.handshakeMs = handshakeMs;
    }

    /** Client side, on a socket connected to where rank {@code expectedPeer} should listen. */
    Conn client(Socket s, int expectedPeer, InetSocketAddress addr) throws IOException {
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
                throw new CommunicatorException(transport.who() + ": " + addr + " (expected rank " + expectedPeer
                        + ") is not a spark-moe rank (bad greeting)");
            }
            serverRank = in.readInt();
            in.readFully(nonceS);
        } catch (EOFException e) {
            throw new CommunicatorException(transport.who() + ": " + addr + " (expected rank " + expectedPeer
                    + ") closed the connection before greeting");
        }
        if (serverRank != expectedPeer) {
            throw new CommunicatorException(transport.who() + ": " + addr + " says it is rank " + serverRank + " but rank "
                    + expectedPeer + " was expected there; hint: stale address table or two jobs sharing ports");
        }
        byte[] nonceC = new byte[NONCE_BYTES];
        RANDOM.nextBytes(nonceC);
        out.write(MAGIC);
        out.writeInt(transport.rank);
        out.write(nonceC);
        out.write(secret.hmac(nonceS, intBytes(transport.rank), CLIENT_LABEL));
        out.flush();
        byte[] proof = new byte[32];
        try {
            in.readFully(proof);
        } catch (EOFException | SocketException e) {
            throw new CommunicatorException(transport.who() + ": rank " + expectedPeer + " at " + addr
                    + " refused our authentication; hint: every rank must hold the same job secret");
        }
        if (!MessageDigest.isEqual(proof, secret.hmac(nonceC, nonceS, intBytes(serverRank), SERVER_LABEL))) {
            throw new CommunicatorException(transport.who() + ": the listener at " + addr + " failed to prove it holds the job "
                    + "secret (claims rank " + serverRank + "); refusing to talk to it");
        }
        return new Conn(s, in, out);
    }


    /**
     * Server side, on an accepted socket: a peer that proves the secret and a valid rank is handed with its intent to
     * {@link TcpTransport#admit}; any other connection is rejected (closed and logged).
     */
    void serve(Socket s) {
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
            out.writeInt(transport.rank);
            out.write(nonceS);
            out.flush();
            byte[] magic = new byte[MAGIC.length];
            try {
                in.readFully(magic);
                if (!MessageDigest.isEqual(magic, MAGIC)) {
                    transport.reject(s, "not a spark-moe peer (bad greeting)");
                    return;
                }
                int clientRank = in.readInt();
                byte[] nonceC = new byte[NONCE_BYTES];
                in.readFully(nonceC);
                byte[] proof = new byte[32];
                in.readFully(proof);
                if (!MessageDigest.isEqual(proof, secret.hmac(nonceS, intBytes(clientRank), CLIENT_LABEL))) {
                    transport.reject(s, "authentication failed (claimed rank " + clientRank + "; wrong job secret?)");
                    return;
                }
                if (clientRank < 0 || clientRank >= transport.size || clientRank == transport.rank) {
                    transport.reject(s, "authenticated but claims invalid rank " + clientRank + " (world size " + transport.size + ")");
                    return;
                }
                out.write(secret.hmac(nonceC, nonceS, intBytes(transport.rank), SERVER_LABEL));
                out.flush();
                byte intent = in.readByte();
                transport.admit(s, in, out, remote, clientRank, intent);
            } catch (SocketTimeoutException e) {
                got = counting.count;
                transport.reject(s, "handshake timed out after " + handshakeMs + " ms"
                        + (got == 0 ? " (silent connection)" : " (" + got + " bytes received)"));
            } catch (EOFException | SocketException e) {
                transport.reject(s, "connection closed during handshake (" + counting.count + " bytes received)");
            }
        } catch (IOException e) {
            transport.reject(s, "I/O error during handshake: " + e);
        } catch (RuntimeException e) {
            transport.reject(s, "error during handshake: " + e);
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
}

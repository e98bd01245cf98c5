package dev.sparkmoe.gpu.nccl;

import dev.sparkmoe.parallel.comm.Communicator;
import java.util.Objects;

/**
 * How the ranks of a new NCCL world agree on its unique id: rank 0 creates it ({@code ncclGetUniqueId}) and the
 * bootstrap carries its bytes to every other rank. Implementations: {@link #over(Communicator)} for an existing host
 * communicator (the TCP world of the launcher); the Spark driver's barrier stage adapts
 * {@code BarrierTaskContext.allGather}.
 */
public interface NcclBootstrap {

    /** This rank in the new world. */
    int rank();

    /** Number of ranks of the new world. */
    int size();

    /**
     * Collective: every rank calls it; rank 0 passes its bytes, the others pass anything (ignored); returns rank 0's
     * bytes on every rank.
     */
    byte[] broadcastFromRank0(byte[] mine);

    /** A bootstrap over a host communicator: its rank and size, its {@code broadcastBytes(.., 0)}. */
    static NcclBootstrap over(Communicator host) {
        Objects.requireNonNull(host, "host communicator");
        return new NcclBootstrap() {
            @Override
            public int rank() {
                return host.rank();
            }

            @Override
            public int size() {
                return host.size();
            }

            @Override
            public byte[] broadcastFromRank0(byte[] mine) {
                return host.broadcastBytes(mine, 0);
            }

            @Override
            public String toString() {
                return "NcclBootstrap.over(" + host.name() + ")";
            }
        };
    }
}

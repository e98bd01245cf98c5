package dev.sparkmoe.gpu.launch;

import dev.sparkmoe.gpu.nccl.NcclCommunicator;
import dev.sparkmoe.parallel.comm.Communicator;
import java.util.Optional;

/**
 * What a {@link RankEntry} gets: its place in the job, its device, and the world communicators.
 *
 * @param rank       global rank, 0..worldSize-1
 * @param worldSize  number of ranks
 * @param localRank  rank on this host (the launcher starts every rank on one host, so it equals {@code rank})
 * @param backend    "cuda" or "cpu", chosen explicitly or by "auto" (and logged)
 * @param device     CUDA device ordinal of this rank, or -1 on the CPU backend
 * @param host       the host world (TCP): metadata, checkpoints' manifests, the NCCL bootstrap
 * @param nccl       the NCCL world on {@code device} when the backend is cuda; split it per mesh dimension
 */
public record RankContext(int rank, int worldSize, int localRank, String backend, int device, Communicator host,
                          Optional<NcclCommunicator> nccl) {

    /** The communicator for training collectives: the NCCL world when present, else the host world. */
    public Communicator world() {
        return nccl.<Communicator>map(c -> c).orElse(host);
    }

    /** True when the ranks run on GPUs. */
    public boolean isCuda() {
        return "cuda".equals(backend);
    }

    /** Prefix for log lines: "rank 3/8". */
    public String tag() {
        return "rank " + rank + "/" + worldSize;
    }
}

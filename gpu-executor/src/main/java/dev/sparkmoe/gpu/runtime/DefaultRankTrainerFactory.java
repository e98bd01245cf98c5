package dev.sparkmoe.gpu.runtime;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.io.TensorSink;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import dev.sparkmoe.gpu.cuda.CudaBackend;
import dev.sparkmoe.gpu.nccl.NcclCommunicator;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.train.DistributedTrainer;
import dev.sparkmoe.parallel.train.RankTrainer;
import dev.sparkmoe.parallel.train.RankTrainerFactory;
import dev.sparkmoe.parallel.train.StepMetrics;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.io.IOException;
import java.util.List;
import java.util.Map;

/**
 * The trainer every launcher uses (Spark barrier tasks, the standalone launcher): picks the backend for this rank,
 * on a GPU builds the NCCL world over the given host world (waiting for its peers as long as the host world does:
 * training.comm_timeout_s in a Spark job), and builds the distributed trainer, which reads only this rank's slices of
 * the initial weights (or initialises its shards from the seed).
 */
public final class DefaultRankTrainerFactory implements RankTrainerFactory {
    private static final long serialVersionUID = 1L;

    @Override
    public RankTrainer create(TrainerSpec spec, Communicator hostWorld) {
        Backend backend = Backends.create(spec.backend(), spec.deviceId(), spec.cpuBlasThreads(),
                hostWorld.rank() == 0);
        if (!(backend instanceof CudaBackend)) {
            return new DistributedTrainer(spec, hostWorld, backend);
        }
        CudaBackend cuda = (CudaBackend) backend;
        cuda.setGemmPrecision("bf16".equals(spec.precision()) ? CudaBackend.GemmPrecision.BF16
                : CudaBackend.GemmPrecision.F32);
        NcclCommunicator deviceWorld = GpuWorld.create(hostWorld, cuda);
        java.util.logging.Logger.getLogger(DefaultRankTrainerFactory.class.getName()).info(() -> "rank "
                + hostWorld.rank() + ": NCCL world of " + deviceWorld.size() + " ranks on cuda:" + cuda.device()
                + ", bootstrapped over the host world '" + hostWorld.name() + "' (timeout "
                + hostWorld.timeout().map(java.time.Duration::toSeconds).map(t -> t + " s").orElse("from the environment")
                + ")");
        DistributedTrainer trainer;
        try {
            trainer = new DistributedTrainer(spec, deviceWorld, cuda);
        } catch (RuntimeException e) {
            deviceWorld.close();
            cuda.close();
            throw e;
        }
        return new GpuRankTrainer(trainer, deviceWorld, cuda);
    }

    /** A GPU rank's trainer: closes the NCCL world and the device backend with it. */
    static final class GpuRankTrainer implements RankTrainer {
        private final DistributedTrainer trainer;
        private final NcclCommunicator world;
        private final CudaBackend backend;

        GpuRankTrainer(DistributedTrainer trainer, NcclCommunicator world, CudaBackend backend) {
            this.trainer = trainer;
            this.world = world;
            this.backend = backend;
        }

        @Override
        public StepMetrics step(List<int[]> sequences) {
            return trainer.step(sequences);
        }

        @Override
        public long stepsTaken() {
            return trainer.stepsTaken();
        }

        @Override
        public Map<String, Tensor> rankState() {
            return trainer.rankState();
        }

        @Override
        public void loadState(Map<String, Tensor> state) {
            trainer.loadState(state);
        }

        @Override
        public List<TensorSpec> modelTensors() {
            return trainer.modelTensors();
        }

        @Override
        public void exportModel(TensorSink sink) throws IOException {
            trainer.exportModel(sink);
        }

        @Override
        public void loadResharded(int savedRanks, java.util.function.IntFunction<Map<String, Tensor>> saved) {
            trainer.loadResharded(savedRanks, saved);
        }

        @Override
        public String hfConfigJson() {
            return trainer.hfConfigJson();
        }

        @Override
        public void close() {
            try {
                trainer.close();
            } finally {
                try {
                    world.close();
                } finally {
                    backend.close();
                }
            }
        }
    }
}

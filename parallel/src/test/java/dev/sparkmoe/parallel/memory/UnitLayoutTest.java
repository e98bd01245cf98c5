package dev.sparkmoe.parallel.memory;

import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.sparkmoe.core.backend.Bf16Gemms;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.ModuleHook;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import dev.sparkmoe.parallel.fsdp.FsdpParam;
import dev.sparkmoe.parallel.fsdp.FsdpUnit;
import dev.sparkmoe.parallel.train.DistributedTrainer;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * The planner's parameters and FSDP units are the model's and the trainer's: the same names and shapes as
 * {@code Qwen3MoeModel.parameters()} (all experts), and on rank 0 of a real {@code DistributedTrainer} the same
 * sharded parameters in the same order (units in creation order), each with the same group size, shard dim and shard
 * shape, and the same FSDP units (path, parameters, whether each reshards after forward and gathers for backward).
 * The trainer runs at bf16 on a backend whose GEMMs take bf16 ({@code Bf16Gemms}, as the CUDA backend at bf16), so
 * that it keeps compute copies where it does on a GPU: the planner keeps them for the same parameters, and its CUDA
 * plan holds the allocator's block of 2 bytes an element for each, its CPU plan none. Covers expert parallelism
 * (with groups of one), experts split on dim 1, uneven shards, tied embeddings and a dense layer.
 */
class UnitLayoutTest {

    @ParameterizedTest(name = "world={0}, ep={1}, experts={2}, tied={3}")
    @CsvSource({"1,1,8,false", "2,1,8,false", "2,2,8,false", "4,2,8,false", "4,4,8,true", "3,1,8,false",
        "4,1,2,false", "8,2,8,true"})
    void theParametersAndUnitsAreTheTrainers(int world, int ep, int experts, boolean tied) {
        Qwen3MoeConfig c = MeasuredPeaks.tiny().numExperts(experts).numExpertsPerTok(Math.min(2, experts))
                .tieWordEmbeddings(tied).mlpOnlyLayers(tied ? List.of(0) : List.of()).build();
        UnitLayout layout = new UnitLayout(c, world, ep);

        List<String> model = new ArrayList<>();
        for (Parameter p : new Qwen3MoeModel(c, new CpuBackend()).parameters()) {
            model.add(p.name() + Arrays.toString(p.shape()));
        }
        List<String> planned = new ArrayList<>();
        for (UnitLayout.Param p : layout.constructionOrder) {
            planned.add(p.name + Arrays.toString(p.globalShape));
        }
        model.sort(null);
        planned.sort(null);
        assertEquals(model, planned, "the model's parameters");

        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(1e-4, 1e-4, 0, 1, "constant", 0.9, 0.95,
                1e-8, 0.1, 1.0, 1);
        TrainerSpec spec = new TrainerSpec(c.toJson(), null, 1, world, ep, 16, opt, "cpu", -1, "bf16");
        long[] copyBytes = new long[2]; // rank 0's compute copies: as the CUDA allocator's blocks, and as elements
        List<List<String>> real = InJvmRanks.run(world, Duration.ofMinutes(1), comm -> {
            try (DistributedTrainer t = new DistributedTrainer(spec, comm, Bf16Gemms.over(new CpuBackend()), null)) {
                List<String> out = new ArrayList<>();
                for (FsdpParam p : t.shardedParameters()) {
                    out.add(p.parameter().name() + Arrays.toString(p.layout().fullShape()) + " group "
                            + p.group().size() + " dim " + p.layout().dim() + " shard "
                            + Arrays.toString(p.shard().shape()) + (p.computesOnShard() ? " computed on it" : "")
                            + (p.keepsComputeCopy() ? ", compute copy" : ""));
                    if (p.keepsComputeCopy() && comm.rank() == 0) {
                        copyBytes[0] += MemoryPlanner.cudaBlockBytes(2L * p.shard().numel());
                        copyBytes[1] += 2L * p.shard().numel();
                    }
                }
                List<String> fsdpUnits = new ArrayList<>();
                for (Module m : t.model().modules()) {
                    for (ModuleHook hook : m.hooks()) {
                        if (hook instanceof FsdpUnit u) {
                            List<String> names = new ArrayList<>();
                            for (FsdpParam p : u.params()) {
                                names.add(p.parameter().name());
                            }
                            fsdpUnits.add(u.path() + " " + names + " reshard after forward "
                                    + u.reshardAfterForward() + ", unshard in backward " + u.unshardInBackward());
                        }
                    }
                }
                return List.of(out, fsdpUnits);
            }
        }).get(0);
        List<String> trainer = real.get(0);
        List<String> units = new ArrayList<>();
        for (UnitLayout.Param p : layout.params()) {
            units.add(p.name + Arrays.toString(p.shape) + " group " + p.groupSize + " dim " + p.layout.dim()
                    + " shard " + Arrays.toString(p.layout.shardShape(0)) + (p.computesOnShard ? " computed on it"
                    : "") + (p.keepsComputeCopy(true) ? ", compute copy" : ""));
        }
        assertEquals(trainer, units, "rank 0's sharded parameters, in FullyShard's order");
        List<String> plannedUnits = new ArrayList<>();
        for (UnitLayout.Unit u : layout.units) {
            List<String> names = new ArrayList<>();
            for (UnitLayout.Param p : u.params) {
                names.add(p.name);
            }
            plannedUnits.add(u.path + " " + names + " reshard after forward " + u.reshardAfterForward
                    + ", unshard in backward " + u.unshardInBackward);
        }
        List<String> realUnits = new ArrayList<>(real.get(1));
        plannedUnits.sort(null);
        realUnits.sort(null);
        assertEquals(realUnits, plannedUnits, "the FSDP units");
        long shardElements = 0;
        for (UnitLayout.Param p : layout.params()) {
            shardElements += p.shardElements();
        }
        assertEquals(shardElements * 4, MemoryPlanner.plan(PlanRequest.defaults(c).withLayout(world, ep)
                .withPrecision(PlanRequest.Precision.F32, PlanRequest.Device.CPU)).bytes(Category.PARAMETERS));
        PlanRequest cuda = PlanRequest.defaults(c).withLayout(world, ep).withBatch(1, 16, 1);
        assertEquals(copyBytes[0], MemoryPlanner.plan(cuda).bytes(Category.COMPUTE_COPIES), "the CUDA plan's copies");
        PlanRequest cpu = cuda.withPrecision(PlanRequest.Precision.BF16, PlanRequest.Device.CPU);
        assertEquals(copyBytes[1], MemoryPlanner.plan(cpu, true).bytes(Category.COMPUTE_COPIES), "bf16 GEMMs' copies");
        assertEquals(0, MemoryPlanner.plan(cpu).bytes(Category.COMPUTE_COPIES), "the CPU backend's GEMMs take f32");
    }
}

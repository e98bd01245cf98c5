package dev.sparkmoe.parallel.train;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.model.Fixtures;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import java.nio.file.Files;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.logging.Handler;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import org.junit.jupiter.api.Test;

/** The mixed-precision setting: validated, and on the CPU backend bf16 is computed in f32 and the log says so. */
class MixedPrecisionTest {

    static TrainerSpec spec(String cfg, String precision) {
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(1e-3, 1e-3, 0, 1, "constant", 0.9,
                0.95, 1e-8, 0.0, 0.0, 1);
        return new TrainerSpec(cfg, null, 0, 1, 1, 8, opt, "cpu", -1, precision);
    }

    @Test
    void cpuBackendSaysItComputesBf16InF32() throws Exception {
        String cfg = Files.readString(Fixtures.tiny().resolve("config.json"));
        List<String> messages = new CopyOnWriteArrayList<>();
        Logger log = Logger.getLogger(DistributedTrainer.class.getName());
        Handler h = new Handler() {
            @Override
            public void publish(LogRecord r) {
                messages.add(r.getMessage());
            }

            @Override
            public void flush() {
            }

            @Override
            public void close() {
            }
        };
        log.addHandler(h);
        try {
            InJvmRanks.run(1, Duration.ofSeconds(30), c -> {
                new DistributedTrainer(spec(cfg, "bf16"), c, new CpuBackend(), null).close();
                return null;
            });
        } finally {
            log.removeHandler(h);
        }
        assertTrue(messages.stream().anyMatch(m -> m.contains("computes in f32")), messages.toString());
    }

    @Test
    void unknownPrecisionIsRejected() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> spec("{}", "fp8"));
        assertTrue(e.getMessage().contains("fp8") && e.getMessage().contains("bf16"), e.getMessage());
    }
}

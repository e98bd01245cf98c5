package dev.sparkmoe.parallel.fsdp;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.Test;

/** FSDP's gather and scatter on dim 0 and dim 1, with uneven and empty shards. */
class ShardLayoutTest {
    static final CpuBackend BE = new CpuBackend();

    static Tensor iota(int... shape) {
        float[] f = new float[(int) Tensor.numel(shape)];
        for (int i = 0; i < f.length; i++) {
            f[i] = i + 1;
        }
        return Tensor.of(f, shape);
    }

    @Test
    void dimOneShardsOfAStackedExpertTensor() {
        // [E=2, I=3, H=2] over 2 ranks on dim 1: chunk 2 -> rank 0 rows {0,1}, rank 1 row {2}
        Tensor full = iota(2, 3, 2);
        ShardLayout l = new ShardLayout(full.shape(), 1, 2);
        assertArrayEquals(new float[] {1, 2, 3, 4, 7, 8, 9, 10}, l.slice(BE, full, 0).floats());
        assertArrayEquals(new float[] {5, 6, 11, 12}, l.slice(BE, full, 1).floats());
    }

    @Test
    void gatherAndReduceScatterRoundTripUnevenAndEmpty() {
        Tensor full = iota(5, 3);
        List<Boolean> ok = InJvmRanks.run(4, Duration.ofSeconds(10), c -> {
            ShardLayout l = new ShardLayout(full.shape(), 0, 4); // chunks 2,2,1,0
            Tensor shard = l.slice(BE, full, c.rank());
            Tensor back = l.allGather(BE, c, shard);
            assertArrayEquals(full.floats(), back.floats());
            // every rank contributes the full tensor: the reduced shard is 4x its slice, scaled by 1/4
            Tensor red = l.reduceScatter(BE, c, full, 0.25f);
            assertArrayEquals(shard.floats(), red.floats());
            return true;
        });
        assertArrayEquals(new Object[] {true, true, true, true}, ok.toArray());
    }
}

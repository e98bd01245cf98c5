package dev.sparkmoe.parallel.mesh;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

class ParallelDimsTest {

    @Test
    void derivedDegrees() {
        ParallelDims d = new ParallelDims(8, 2, 8);
        assertEquals(4, d.dpShardModEp());
        assertEquals(2, d.dpShardInEp());
        assertTrue(d.epEnabled());
        assertTrue(d.fsdpEnabled());
        ParallelDims one = ParallelDims.infer(1, 1);
        assertFalse(one.epEnabled());
        assertFalse(one.fsdpEnabled());
        assertEquals(new ParallelDims(4, 4, 4), ParallelDims.infer(4, 4).validateFor(8));
    }

    @Test
    void dpShardMustEqualWorldSize() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> new ParallelDims(4, 2, 6));
        assertTrue(e.getMessage().startsWith("dp_shard (4) must equal world size (6) (dp_shard=4, ep=2,"
                + " world_size=6); "), e.getMessage());
    }

    @Test
    void epMustDivideDpShard() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> new ParallelDims(6, 4, 6));
        assertEquals("ep (4) must divide dp_shard (6) (dp_shard=6, ep=4, world_size=6); choose ep in [1, 2, 3, 6]",
                e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> new ParallelDims(4, 0, 4));
        assertThrows(IllegalArgumentException.class, () -> new ParallelDims(0, 1, 0));
    }

    @Test
    void epMustDivideNumExperts() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> new ParallelDims(6, 3, 6).validateFor(8));
        assertEquals("ep (3) must divide num_experts (8) (dp_shard=6, ep=3, world_size=6); choose ep in [1, 2]"
                + " (the divisors of both num_experts (8) and dp_shard (6))", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> new ParallelDims(16, 16, 16).validateFor(8));
        assertTrue(e.getMessage().contains("choose ep in [1, 2, 4, 8]"), e.getMessage());
    }
}

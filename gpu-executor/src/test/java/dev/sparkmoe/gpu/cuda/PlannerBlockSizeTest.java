package dev.sparkmoe.gpu.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.sparkmoe.parallel.memory.MemoryPlanner;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/** The memory planner rounds each allocation as this backend's caching allocator does (no GPU needed). */
class PlannerBlockSizeTest {

    @Test
    void theMemoryPlannerRoundsRequestsToTheAllocatorsBlocks() {
        SplittableRandom r = new SplittableRandom(5);
        for (int i = 0; i < 20_000; i++) {
            long bytes = i < 10_000 ? i : r.nextLong(1L << (4 + r.nextInt(36)));
            assertEquals(CachingAllocator.sizeClass(bytes), MemoryPlanner.cudaBlockBytes(bytes), bytes + " bytes");
        }
    }
}

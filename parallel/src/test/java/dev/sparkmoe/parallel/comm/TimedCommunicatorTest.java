package dev.sparkmoe.parallel.comm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;

class TimedCommunicatorTest {

    @Test
    void countsEveryCollectiveOfTheGroupAndItsSplitsAndDrainsAround() {
        AtomicInteger drains = new AtomicInteger();
        List<Map<String, double[]>> stats = InJvmRanks.run(2, Duration.ofSeconds(10), c -> {
            TimedCommunicator t = new TimedCommunicator(c, drains::incrementAndGet);
            float[] buf = {c.rank() + 1f};
            t.allReduceSum(buf, 0, 1);
            assertArrayEquals(new float[] {3f}, buf); // results are the inner communicator's
            float[] all = new float[2];
            t.allGather(new float[] {c.rank()}, 0, 1, all, 0);
            try (Communicator sub = t.split(0, c.rank(), "sub")) {
                sub.barrier();
                sub.allToAll(new float[] {1, 2}, new int[] {1, 1}, new float[2], new int[] {1, 1});
            }
            return t.snapshot();
        });
        Map<String, double[]> s = stats.get(0);
        assertEquals(1, s.get("all_reduce")[1]);
        assertEquals(1, s.get("all_gather")[1]);
        assertEquals(1, s.get("barrier")[1]);
        assertEquals(1, s.get("all_to_all")[1]);
        assertTrue(s.get("all_reduce")[0] >= 0);
        assertEquals(16, drains.get()); // before and after 4 timed collectives on each of 2 ranks
    }

    @Test
    void startedCollectivesAreTimedWholeOrPassedThrough() {
        AtomicInteger drains = new AtomicInteger();
        List<Map<String, double[]>> stats = InJvmRanks.run(2, Duration.ofSeconds(10), c -> {
            TimedCommunicator t = new TimedCommunicator(c, drains::incrementAndGet);
            dev.sparkmoe.core.tensor.Tensor send = dev.sparkmoe.core.tensor.Tensor.of(new float[] {c.rank() + 1f}, 1);
            dev.sparkmoe.core.tensor.Tensor recv = dev.sparkmoe.core.tensor.Tensor.of(new float[2], 2);
            t.allGatherStart(send, 0, 1, recv, 0).complete();
            assertArrayEquals(new float[] {1f, 2f}, recv.floats());
            dev.sparkmoe.core.tensor.Tensor part = dev.sparkmoe.core.tensor.Tensor.of(new float[1], 1);
            t.setEnabled(false);
            t.reduceScatterSumStart(dev.sparkmoe.core.tensor.Tensor.of(new float[] {1f, 2f}, 2), 0, part, 0, 1)
                    .complete();
            assertArrayEquals(new float[] {2f * (c.rank() + 1)}, part.floats());
            return t.snapshot();
        });
        assertEquals(1, stats.get(0).get("all_gather")[1]);
        assertTrue(!stats.get(0).containsKey("reduce_scatter"), "not timed while disabled");
        assertEquals(4, drains.get());
    }
}

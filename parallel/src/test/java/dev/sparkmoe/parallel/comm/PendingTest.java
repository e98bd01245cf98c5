package dev.sparkmoe.parallel.comm;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

class PendingTest {

    @Test
    void onceCompletesItsCollectiveOnlyOnTheFirstCall() {
        int[] calls = {0};
        Pending p = Pending.once(() -> calls[0]++);
        p.complete();
        p.complete();
        assertEquals(1, calls[0]);
    }

    @Test
    void allCompletesEachPartInOrder() {
        List<String> order = new ArrayList<>();
        List<Pending> parts = new ArrayList<>(List.of(() -> order.add("a"), () -> order.add("b")));
        Pending all = Pending.all(parts);
        parts.clear(); // the handle keeps its own copy
        all.complete();
        assertEquals(List.of("a", "b"), order);
    }
}

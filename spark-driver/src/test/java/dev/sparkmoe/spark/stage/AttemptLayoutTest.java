package dev.sparkmoe.spark.stage;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.function.IntSupplier;
import org.junit.jupiter.api.Test;

/** How an attempt gets its layout: worked examples, with the free task slots as a scripted sequence. */
class AttemptLayoutTest {
    static final AttemptLayout FULL = new AttemptLayout(4, 2, 1);

    /** Free slots as polled, one value per poll, the last repeated. */
    static IntSupplier slots(Integer... polls) {
        List<Integer> l = List.of(polls);
        Iterator<Integer> it = l.iterator();
        int[] last = {l.get(0)};
        return () -> {
            if (it.hasNext()) {
                last[0] = it.next();
            }
            return last[0];
        };
    }

    @Test
    void anAttemptWaitsForItsSlotsToRegisterBeforeItIsSubmitted() {
        int[] polls = {0};
        IntSupplier s = slots(0, 0, 2, 3, 4);
        IntSupplier counted = () -> {
            polls[0]++;
            return s.getAsInt();
        };
        long t0 = System.nanoTime();
        assertEquals(FULL, AttemptLayout.forAttempt(FULL, 1, false, 60_000, 8, counted, "run"));
        assertEquals(5, polls[0], "polled until four slots were free");
        assertTrue(System.nanoTime() - t0 < 30_000_000_000L, "returned once the slots were there, not after the wait");
    }

    @Test
    void slotsThatCannotBeKnownOrAreThereReturnTheFullLayoutAtOnce() {
        assertEquals(FULL, AttemptLayout.forAttempt(FULL, 2, true, 60_000, 8, slots(-1), "run"));
        assertEquals(FULL, AttemptLayout.forAttempt(FULL, 2, true, 60_000, 8, slots(6), "run"));
    }

    @Test
    void theFirstAttemptAndARunThatIsNotElasticKeepTheFullLayoutWhenSlotsAreShort() {
        assertEquals(FULL, AttemptLayout.forAttempt(FULL, 1, true, 0, 8, slots(2), "run"));
        assertEquals(FULL, AttemptLayout.forAttempt(FULL, 2, false, 0, 8, slots(2), "run"));
        assertEquals(FULL, AttemptLayout.forAttempt(FULL, 2, true, 0, 8, slots(0), "run"), "no slot at all");
    }

    @Test
    void anElasticRetryTakesTheSlotsThereAreWithAnEpThatDividesThemAndTheExperts() {
        // 2 of 4 slots: ep 2 divides 2 and 8 experts; each rank takes two data ranks: grad_accum 2
        assertEquals(new AttemptLayout(2, 2, 2), AttemptLayout.forAttempt(FULL, 2, true, 0, 8, slots(2), "run"));
        // 3 of 4: ep 2 does not divide 3: ep 1; ranks take up to two data ranks
        assertEquals(new AttemptLayout(3, 1, 2), AttemptLayout.forAttempt(FULL, 3, true, 0, 8, slots(3), "run"));
        // 1 of 4, grad_accum 2 configured: 4 data ranks on one rank
        assertEquals(new AttemptLayout(1, 1, 8), AttemptLayout.forAttempt(new AttemptLayout(4, 2, 2), 2, true, 0, 8,
                slots(1), "run"));
        // 6 of 8 with ep 4 and 6 experts: 3 divides 6 slots and 6 experts
        assertEquals(new AttemptLayout(6, 3, 2), AttemptLayout.forAttempt(new AttemptLayout(8, 4, 1), 2, true, 0, 6,
                slots(6), "run"));
    }

    @Test
    void anElasticAttemptNamesItsLayoutInProgressLinesAndRecords() {
        AttemptLayout l = new AttemptLayout(1, 1, 2);
        assertEquals("1 of 2 ranks, ep 1, grad_accum 2", l.note(new AttemptLayout(2, 2, 1)));
        assertEquals(Map.of("world_size", 1, "ep", 1, "grad_accum", 2), l.fields());
        assertEquals(List.of("world_size", "ep", "grad_accum"), List.copyOf(l.fields().keySet()));
    }
}

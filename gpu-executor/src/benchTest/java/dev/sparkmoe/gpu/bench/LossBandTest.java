package dev.sparkmoe.gpu.bench;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * The convergence decision ({@link LossBand}) on made-up curves: a curve inside the widened band passes; one outside
 * at more than a tenth of the compared steps, or with its final loss outside, fails, naming the widest miss; the
 * warm-up steps are not compared; a NaN loss is outside; bad settings are refused with the value and the fix.
 */
class LossBandTest {
    /** Three PyTorch-like runs: 10 / (1 + s / 10), spread by 0.5% around it. */
    static List<double[]> runs(int steps) {
        double[][] r = new double[3][steps];
        for (int s = 0; s < steps; s++) {
            double base = 10 / (1 + s / 10.0);
            r[0][s] = base * 0.995;
            r[1][s] = base;
            r[2][s] = base * 1.005;
        }
        return List.of(r[0], r[1], r[2]);
    }

    static double[] scaled(List<double[]> runs, double f) {
        double[] o = runs.get(1).clone();
        for (int s = 0; s < o.length; s++) {
            o[s] *= f;
        }
        return o;
    }

    @Test
    void insideTheWidenedBandPassesAndOutsideFails() {
        List<double[]> runs = runs(200);
        LossBand.Decision in = LossBand.decide(runs, scaled(runs, 1.012), 20, 0.01, 0.9); // 1.2%: inside 0.5% + 1%
        assertTrue(in.pass(), in.describe(20, 0.01, 0.9));
        assertEquals(180, in.compared());
        assertEquals(180, in.inside());
        assertEquals(0, in.worstStep());

        LossBand.Decision out = LossBand.decide(runs, scaled(runs, 1.02), 20, 0.01, 0.9); // 2%: above 1.5%
        assertFalse(out.pass());
        assertEquals(0, out.inside());
        assertFalse(out.finalInside());
        assertTrue(out.describe(20, 0.01, 0.9).contains("FAIL"), out.describe(20, 0.01, 0.9));
    }

    @Test
    void aTenthOfTheStepsMayMissButNotTheLast() {
        List<double[]> runs = runs(120);
        double[] ours = scaled(runs, 1.0);
        for (int s = 20; s < 30; s++) { // 10 of 100 compared steps 3% high: 90% inside
            ours[s] *= 1.03;
        }
        ours[5] = Double.NaN; // before --after: not compared
        LossBand.Decision d = LossBand.decide(runs, ours, 20, 0.01, 0.9);
        assertTrue(d.pass(), d.describe(20, 0.01, 0.9));
        assertEquals(90, d.inside());
        assertTrue(d.worstMiss() > 0.01 && d.worstMiss() < 0.02, "worst miss " + d.worstMiss());

        ours[30] = Double.NaN; // one more outside: 89%
        assertFalse(LossBand.decide(runs, ours, 20, 0.01, 0.9).pass());

        double[] lastOut = scaled(runs, 1.0);
        lastOut[119] *= 0.9; // only the final loss outside
        LossBand.Decision f = LossBand.decide(runs, lastOut, 20, 0.01, 0.9);
        assertEquals(99, f.inside());
        assertFalse(f.finalInside());
        assertFalse(f.pass());
        assertEquals(120, f.worstStep());
    }

    @Test
    void badSettingsAreRefusedWithTheFix() {
        List<double[]> runs = runs(30);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> LossBand.decide(runs, scaled(runs, 1), 30, 0.01, 0.9));
        assertTrue(e.getMessage().contains("--after 30") && e.getMessage().contains("30 steps in common"),
                e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> LossBand.decide(List.of(), new double[3], 0, 0.01, 0.9));
        assertTrue(e.getMessage().contains("--torch"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class,
                () -> LossBand.decide(runs, scaled(runs, 1), 2, 0.01, 1.5));
        assertTrue(e.getMessage().contains("--inside 1.5"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> LossCurve.losses("{\"impl\": \"x\"}", "t.json"));
        assertTrue(e.getMessage().contains("t.json") && e.getMessage().contains("torch_loss_curve.py"),
                e.getMessage());
    }
}

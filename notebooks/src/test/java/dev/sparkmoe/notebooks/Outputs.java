package dev.sparkmoe.notebooks;

import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.util.regex.Matcher;
import java.util.regex.Pattern;

/** Reading values back from what notebook cells printed. */
final class Outputs {
    private Outputs() {
    }

    static String group(String out, String regex) {
        Matcher m = Pattern.compile(regex, Pattern.MULTILINE).matcher(out);
        if (!m.find()) {
            fail("no line matching /" + regex + "/ in the notebook's output:\n" + out);
        }
        return m.group(1).strip();
    }

    /** The notebooks print "first loss: X" and "final loss: Y"; training must have lowered it. */
    static void assertLossFell(String out) {
        double first = Double.parseDouble(group(out, "^first loss: ([0-9.]+)"));
        double last = Double.parseDouble(group(out, "^final loss: ([0-9.]+)"));
        assertTrue(first > 4.0 && first < 8.0, "first loss " + first + " should be near ln(512) = 6.24");
        assertTrue(last < first, "final loss " + last + " should be below the first " + first);
    }
}

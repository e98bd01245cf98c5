package dev.sparkmoe.notebooks;

import java.util.ArrayList;
import java.util.List;

/** Runs a notebook's code cells in order in one kernel, stopping at the first failing cell. */
public final class NotebookRunner {
    private NotebookRunner() {
    }

    /** One executed code cell. */
    public record Executed(Notebook.Cell cell, Kernel.Output output, double seconds) {
    }

    public static List<Executed> run(Notebook nb, Kernel kernel) {
        List<Executed> done = new ArrayList<>();
        for (Notebook.Cell c : nb.codeCells()) {
            long t0 = System.nanoTime();
            Kernel.Output out = kernel.run(nb, c);
            done.add(new Executed(c, out, (System.nanoTime() - t0) / 1e9));
        }
        return done;
    }

    /** The output of the code cell with this number. */
    public static Kernel.Output output(List<Executed> run, int cellNumber) {
        return run.stream().filter(e -> e.cell().number() == cellNumber).findFirst()
                .orElseThrow(() -> new IllegalArgumentException("no executed code cell " + cellNumber)).output();
    }

    /** Everything the cells printed, in order. */
    public static String allOutput(List<Executed> run) {
        StringBuilder sb = new StringBuilder();
        run.forEach(e -> sb.append(e.output().stdout()));
        return sb.toString();
    }
}

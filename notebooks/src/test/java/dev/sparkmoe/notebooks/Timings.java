package dev.sparkmoe.notebooks;

import java.util.List;

/** Prints how long each cell took (surefire keeps it in the test's output). */
final class Timings {
    private Timings() {
    }

    static void print(Notebook nb, List<NotebookRunner.Executed> run) {
        StringBuilder sb = new StringBuilder(nb.name() + " cell timings:");
        double total = 0;
        for (NotebookRunner.Executed e : run) {
            sb.append(String.format(" [%d] %.1fs", e.cell().number(), e.seconds()));
            total += e.seconds();
        }
        System.err.println(sb.append(String.format(", total %.1fs", total)));
    }
}

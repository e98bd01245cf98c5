package dev.sparkmoe.notebooks;

/** Executes code cells one after another in one session, so later cells see what earlier ones defined. */
public interface Kernel extends AutoCloseable {

    /**
     * What a cell produced.
     *
     * @param stdout what it printed (System.out, and Console.out for Scala)
     * @param value  the value of its last expression as the notebook would display it, or null
     */
    record Output(String stdout, String value) {
    }

    /** Runs one cell; throws {@link CellFailedException} when it does not compile or throws. */
    Output run(Notebook notebook, Notebook.Cell cell);

    @Override
    void close();
}

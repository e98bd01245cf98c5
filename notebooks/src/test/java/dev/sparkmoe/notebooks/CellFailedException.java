package dev.sparkmoe.notebooks;

/** A cell that did not compile or threw: names the notebook, the cell number, the cell's source and the reason. */
public final class CellFailedException extends RuntimeException {
    private final int cell;

    public CellFailedException(Notebook notebook, Notebook.Cell cell, String why, Throwable cause) {
        super(notebook.name() + ": cell " + cell.number() + " failed: " + why + "\n--- source of cell "
                + cell.number() + " ---\n" + numbered(cell.source()), cause);
        this.cell = cell.number();
    }

    /** The failing cell's 1-based number in its notebook. */
    public int cell() {
        return cell;
    }

    static String numbered(String src) {
        StringBuilder sb = new StringBuilder();
        String[] lines = src.split("\n", -1);
        for (int i = 0; i < lines.length; i++) {
            sb.append(String.format("%3d| %s%n", i + 1, lines[i]));
        }
        return sb.toString();
    }
}

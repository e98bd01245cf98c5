package dev.sparkmoe.core.json;

/**
 * A JSON text that does not follow RFC 8259, a value the writer cannot encode, or a typed accessor that found the
 * wrong type. Parse errors carry the 1-based line and column of the offending character.
 */
public class JsonException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    private final int line;
    private final int column;

    public JsonException(String message) {
        super(message);
        this.line = -1;
        this.column = -1;
    }

    public JsonException(String message, int line, int column) {
        super("JSON error at line " + line + ", column " + column + ": " + message);
        this.line = line;
        this.column = column;
    }

    /** 1-based line of a parse error, or -1 when the error is not tied to a position. */
    public int line() {
        return line;
    }

    /** 1-based column of a parse error, or -1 when the error is not tied to a position. */
    public int column() {
        return column;
    }
}

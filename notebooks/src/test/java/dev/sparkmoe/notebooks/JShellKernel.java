package dev.sparkmoe.notebooks;

import java.io.File;
import java.util.List;
import java.util.Locale;
import java.util.stream.Collectors;
import jdk.jshell.DeclarationSnippet;
import jdk.jshell.Diag;
import jdk.jshell.EvalException;
import jdk.jshell.JShell;
import jdk.jshell.Snippet;
import jdk.jshell.SnippetEvent;
import jdk.jshell.SourceCodeAnalysis;
import jdk.jshell.UnresolvedReferenceException;

/**
 * Java cells in one JShell, the engine IJava (the Jupyter Java kernel) is built on. The "local" execution engine runs
 * the snippets in this JVM, so they see the test class path (Spark, spark-moe) and Spark runs in-process. A cell is
 * cut into snippets the way JShell's own tool does it ({@link SourceCodeAnalysis#analyzeCompletion}); a snippet that
 * is rejected, depends on something undefined, or throws fails the cell.
 */
public final class JShellKernel implements Kernel {
    private final JShell shell;

    public JShellKernel() {
        shell = JShell.builder().executionEngine("local").build();
        for (String entry : System.getProperty("java.class.path").split(File.pathSeparator)) {
            if (!entry.isBlank()) {
                shell.addToClasspath(entry);
            }
        }
        // IJava's display(Object), which shows an image inline: here it encodes the image as IJava does (PNG) and
        // prints what it would show
        shell.eval("String display(Object o) {\n"
                + "    if (o instanceof java.awt.image.BufferedImage img) {\n"
                + "        var png = new java.io.ByteArrayOutputStream();\n"
                + "        try {\n"
                + "            javax.imageio.ImageIO.write(img, \"png\", png);\n"
                + "        } catch (java.io.IOException e) {\n"
                + "            throw new java.io.UncheckedIOException(e);\n"
                + "        }\n"
                + "        System.out.println(\"display: image/png \" + img.getWidth() + \"x\" + img.getHeight() + \", \"\n"
                + "                + png.size() + \" bytes\");\n"
                + "    } else {\n"
                + "        System.out.println(\"display: text/plain \" + o);\n"
                + "    }\n"
                + "    return \"display\";\n"
                + "}");
    }

    @Override
    public Output run(Notebook nb, Notebook.Cell cell) {
        SourceCodeAnalysis sca = shell.sourceCodeAnalysis();
        String src = cell.source();
        String rest = src;
        String value = null;
        try (Capture out = new Capture()) {
            while (!rest.isBlank()) {
                int offset = src.length() - rest.length();
                SourceCodeAnalysis.CompletionInfo ci = sca.analyzeCompletion(rest);
                if (ci.completeness() == SourceCodeAnalysis.Completeness.EMPTY) {
                    break; // only comments left
                }
                if (!ci.completeness().isComplete()) {
                    throw new CellFailedException(nb, cell, "incomplete code at line "
                            + lineOf(src, offset + codeStart(rest))
                            + " (" + ci.completeness().name().toLowerCase(Locale.ROOT) + "): "
                            + firstLine(rest.strip()), null);
                }
                String snippet = ci.source();
                rest = ci.remaining();
                value = null;
                for (SnippetEvent ev : shell.eval(snippet)) {
                    if (ev.causeSnippet() != null) {
                        continue; // a dependent snippet's status update, not this snippet's own outcome
                    }
                    value = check(nb, cell, src, offset, ev);
                }
            }
            return new Output(out.text(), value);
        }
    }

    private String check(Notebook nb, Notebook.Cell cell, String src, int offset, SnippetEvent ev) {
        Snippet s = ev.snippet();
        // The snippet's first line of code, in the cell and in the snippet's own source (diagnostics count from it).
        String own = s.source();
        int ownStart = codeStart(own);
        String firstCode = firstLine(own.substring(ownStart)).strip();
        int inCell = src.indexOf(firstCode, offset);
        int base = lineOf(src, inCell >= 0 ? inCell : offset + codeStart(src.substring(offset)));
        int ownBase = lineOf(own, ownStart);
        if (ev.status() == Snippet.Status.REJECTED) {
            List<Diag> diags = shell.diagnostics(s).toList();
            String why = diags.isEmpty() ? "rejected: " + firstLine(s.source()) : diags.stream().map(d -> "line "
                    + (base + lineOf(own, (int) Math.max(ownStart, d.getStartPosition())) - ownBase) + ": "
                    + d.getMessage(Locale.ROOT)).collect(Collectors.joining("; "));
            throw new CellFailedException(nb, cell, "does not compile: " + why, null);
        }
        if (s instanceof DeclarationSnippet d && ev.status() != Snippet.Status.VALID) {
            String missing = shell.unresolvedDependencies(d).collect(Collectors.joining(", "));
            throw new CellFailedException(nb, cell, "line " + base + ": " + d.name() + " refers to undefined "
                    + missing, null);
        }
        if (ev.exception() != null) {
            throw new CellFailedException(nb, cell, "line " + base + " threw " + describe(ev.exception()),
                    ev.exception());
        }
        return ev.value();
    }

    static String describe(Throwable t) {
        StringBuilder sb = new StringBuilder();
        for (Throwable c = t; c != null; c = c.getCause()) {
            if (sb.length() > 0) {
                sb.append("\n  caused by ");
            }
            if (c instanceof EvalException e) {
                sb.append(e.getExceptionClassName()).append(": ").append(e.getMessage());
            } else if (c instanceof UnresolvedReferenceException u) {
                sb.append("a call of ").append(u.getSnippet().source().strip()).append(", which is not defined");
            } else {
                sb.append(c);
            }
        }
        return sb.toString();
    }

    /** Index of the first character of code: after leading whitespace and comments. */
    static int codeStart(String s) {
        int i = 0;
        while (i < s.length()) {
            if (Character.isWhitespace(s.charAt(i))) {
                i++;
            } else if (s.startsWith("//", i)) {
                int nl = s.indexOf('\n', i);
                i = nl < 0 ? s.length() : nl + 1;
            } else if (s.startsWith("/*", i)) {
                int end = s.indexOf("*/", i + 2);
                i = end < 0 ? s.length() : end + 2;
            } else {
                break;
            }
        }
        return Math.min(i, s.length());
    }

    /** 1-based line of a character offset. */
    static int lineOf(String s, int offset) {
        int line = 1;
        for (int i = 0; i < Math.min(offset, s.length()); i++) {
            if (s.charAt(i) == '\n') {
                line++;
            }
        }
        return line;
    }

    private static String firstLine(String s) {
        int nl = s.indexOf('\n');
        return nl < 0 ? s : s.substring(0, nl);
    }

    @Override
    public void close() {
        shell.close();
    }
}

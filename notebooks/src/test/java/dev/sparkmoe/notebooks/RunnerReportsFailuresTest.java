package dev.sparkmoe.notebooks;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The runner must not pass silently: a broken cell fails the run with its number, its source and the reason. */
class RunnerReportsFailuresTest {
    @TempDir
    Path tmp;

    Path ipynb(String... codeCells) throws Exception {
        ObjectNode nb = Notebook.JSON.createObjectNode();
        nb.put("nbformat", 4).put("nbformat_minor", 5);
        nb.putObject("metadata").putObject("kernelspec").put("name", "java").put("language", "java");
        ArrayNode cells = nb.putArray("cells");
        cells.addObject().put("cell_type", "markdown").putArray("source").add("# a notebook with a broken cell");
        for (String c : codeCells) {
            ObjectNode cell = cells.addObject().put("cell_type", "code");
            ArrayNode src = cell.putArray("source");
            for (String line : c.split("(?<=\n)")) {
                src.add(line);
            }
        }
        Path p = tmp.resolve("broken.ipynb");
        Notebook.JSON.writeValue(p.toFile(), nb);
        return p;
    }

    Path zpln(String... paragraphs) throws Exception {
        ObjectNode note = Notebook.JSON.createObjectNode().put("name", "broken").put("defaultInterpreterGroup",
                "spark");
        ArrayNode ps = note.putArray("paragraphs");
        for (String p : paragraphs) {
            ps.addObject().put("text", p);
        }
        Path p = tmp.resolve("broken.zpln");
        Notebook.JSON.writeValue(p.toFile(), note);
        return p;
    }

    static CellFailedException runFailing(Notebook nb, Kernel k) {
        return assertThrows(CellFailedException.class, () -> NotebookRunner.run(nb, k));
    }

    @Test
    void javaCellThatDoesNotCompileIsReportedWithItsNumberAndSource() throws Exception {
        Notebook nb = Notebook.readIpynb(ipynb("int x = 1;\nSystem.out.println(\"x = \" + x);",
                "int y = x + 1;\nint z = y + undefinedThing;", "System.out.println(\"never reached\");"));
        try (JShellKernel k = new JShellKernel()) {
            CellFailedException e = runFailing(nb, k);
            assertEquals(3, e.cell());
            String m = e.getMessage();
            assertTrue(m.startsWith("broken.ipynb: cell 3 failed: does not compile: line 2: "), m);
            assertTrue(m.contains("undefinedThing"), m);
            assertTrue(m.contains("  2| int z = y + undefinedThing;"), "the cell's source, numbered: " + m);
        }
    }

    @Test
    void javaCellThatThrowsIsReportedWithTheException() throws Exception {
        Notebook nb = Notebook.readIpynb(ipynb("String s = \"42\";",
                "int ok = Integer.parseInt(s);\n// a comment\nint bad = Integer.parseInt(\"forty-two\");"));
        try (JShellKernel k = new JShellKernel()) {
            CellFailedException e = runFailing(nb, k);
            assertEquals(3, e.cell());
            assertTrue(e.getMessage().contains("cell 3 failed: line 3 threw java.lang.NumberFormatException: For "
                    + "input string: \"forty-two\""), e.getMessage());
        }
    }

    @Test
    void incompleteJavaCellIsReported() throws Exception {
        Notebook nb = Notebook.readIpynb(ipynb("int a = 1;\nif (a > 0) {\n  a++;"));
        try (JShellKernel k = new JShellKernel()) {
            CellFailedException e = runFailing(nb, k);
            assertEquals(2, e.cell());
            assertTrue(e.getMessage().contains("incomplete code at line 2"), e.getMessage());
        }
    }

    @Test
    void javaCellsShareStateAndReportValues() throws Exception {
        Notebook nb = Notebook.readIpynb(ipynb("int twice(int v) { return 2 * v; }\nint n = 20;",
                "System.out.println(\"n = \" + n);\ntwice(n) + 2"));
        try (JShellKernel k = new JShellKernel()) {
            List<NotebookRunner.Executed> run = NotebookRunner.run(nb, k);
            assertEquals("n = 20\n", NotebookRunner.output(run, 3).stdout());
            assertEquals("42", NotebookRunner.output(run, 3).value());
        }
    }

    @Test
    void scalaParagraphsThatFailAreReportedWithTheirNumber() throws Exception {
        try (ScalaKernel k = new ScalaKernel(tmp.resolve("repl"))) {
            Notebook typeError = Notebook.readZpln(zpln("%md\n# broken", "%spark\nval a = 1\nprintln(a)",
                    "%spark\nval b: Int = \"text\"", "%spark\nprintln(\"never reached\")"));
            CellFailedException e = runFailing(typeError, k);
            assertEquals(3, e.cell());
            assertTrue(e.getMessage().startsWith("broken.zpln: cell 3 failed: does not compile or threw:"),
                    e.getMessage());
            assertTrue(e.getMessage().contains("type mismatch"), e.getMessage());
            assertTrue(e.getMessage().contains("  1| val b: Int = \"text\""), e.getMessage());

            Notebook throwing = Notebook.readZpln(zpln("%spark\nprintln(a + 1)",
                    "%spark\nrequire(a > 5, s\"a is only $a\")"));
            e = runFailing(throwing, k);
            assertEquals(2, e.cell());
            assertTrue(e.getMessage().contains("java.lang.IllegalArgumentException: requirement failed: a is only 1"),
                    e.getMessage());

            Notebook incomplete = Notebook.readZpln(zpln("%spark\nval c = List(1, 2"));
            e = runFailing(incomplete, k);
            assertEquals(1, e.cell());
            assertTrue(e.getMessage().contains("incomplete code"), e.getMessage());
        }
    }

    @Test
    void paragraphsForOtherInterpretersAreRefusedNotSkipped() throws Exception {
        Path p = zpln("%spark\nval a = 1", "%python\nprint(1)");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Notebook.readZpln(p));
        assertTrue(e.getMessage().contains("paragraph 2 uses interpreter %python"), e.getMessage());
    }

    @Test
    void notebookWithoutAJavaKernelIsRefused() throws Exception {
        Path p = tmp.resolve("python.ipynb");
        Files.writeString(p, "{\"nbformat\": 4, \"metadata\": {\"kernelspec\": {\"name\": \"python3\", "
                + "\"language\": \"python\"}}, \"cells\": []}");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Notebook.readIpynb(p));
        assertTrue(e.getMessage().contains("kernelspec.language is 'python'"), e.getMessage());
    }
}

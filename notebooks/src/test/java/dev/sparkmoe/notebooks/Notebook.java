package dev.sparkmoe.notebooks;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * A notebook as the runner sees it: its cells in order, each with the number its editor shows (1-based, counting
 * markdown cells too) and its language.
 *
 * @param path   the file
 * @param kernel the language its code cells are in: "java" (Jupyter with a Java kernel) or "scala" (Zeppelin %spark)
 * @param cells  every cell, markdown included
 */
public record Notebook(Path path, String kernel, List<Cell> cells) {

    /**
     * One cell.
     *
     * @param number   1-based position in the notebook (Jupyter cell / Zeppelin paragraph)
     * @param language "markdown" or the kernel's language
     * @param source   the code, without Zeppelin's interpreter directive line
     */
    public record Cell(int number, String language, String source) {
        public boolean isCode() {
            return !"markdown".equals(language);
        }
    }

    static final ObjectMapper JSON = new ObjectMapper();

    public List<Cell> codeCells() {
        return cells.stream().filter(Cell::isCode).toList();
    }

    public String name() {
        return path.getFileName().toString();
    }

    /** A Jupyter notebook (nbformat 4) whose kernel is Java. */
    public static Notebook readIpynb(Path path) throws IOException {
        JsonNode nb = JSON.readTree(path.toFile());
        require(nb.path("nbformat").asInt() == 4, path, "nbformat is " + nb.path("nbformat") + ", expected 4");
        String lang = nb.path("metadata").path("kernelspec").path("language").asText("");
        require("java".equals(lang), path, "kernelspec.language is '" + lang + "', expected 'java'");
        List<Cell> cells = new ArrayList<>();
        int n = 0;
        for (JsonNode c : nb.path("cells")) {
            n++;
            String type = c.path("cell_type").asText();
            String src = joinSource(c.path("source"));
            switch (type) {
                case "code" -> cells.add(new Cell(n, "java", src));
                case "markdown", "raw" -> cells.add(new Cell(n, "markdown", src));
                default -> throw new IllegalArgumentException(path + ": cell " + n + " has cell_type '" + type + "'");
            }
        }
        return new Notebook(path, "java", cells);
    }

    /** A Zeppelin note (0.10+ export, .zpln): %spark paragraphs are Scala, %md ones markdown; others are refused. */
    public static Notebook readZpln(Path path) throws IOException {
        JsonNode note = JSON.readTree(path.toFile());
        String defaultGroup = note.path("defaultInterpreterGroup").asText("spark");
        List<Cell> cells = new ArrayList<>();
        int n = 0;
        for (JsonNode p : note.path("paragraphs")) {
            n++;
            String text = p.path("text").asText("");
            String directive = "%" + defaultGroup;
            String body = text;
            String trimmed = text.stripLeading();
            if (trimmed.startsWith("%")) {
                int nl = trimmed.indexOf('\n');
                directive = (nl < 0 ? trimmed : trimmed.substring(0, nl)).trim();
                body = nl < 0 ? "" : trimmed.substring(nl + 1);
            }
            switch (directive) {
                case "%spark", "%spark.spark" -> cells.add(new Cell(n, "scala", body));
                case "%md", "%markdown" -> cells.add(new Cell(n, "markdown", body));
                default -> throw new IllegalArgumentException(path + ": paragraph " + n + " uses interpreter "
                        + directive + ", which the test runner cannot execute (only %spark and %md)");
            }
        }
        require(!cells.isEmpty(), path, "no paragraphs");
        return new Notebook(path, "scala", cells);
    }

    private static String joinSource(JsonNode src) {
        if (src.isArray()) {
            StringBuilder sb = new StringBuilder();
            src.forEach(l -> sb.append(l.asText()));
            return sb.toString();
        }
        return src.asText("");
    }

    private static void require(boolean ok, Path path, String why) {
        if (!ok) {
            throw new IllegalArgumentException(path + ": " + why);
        }
    }
}

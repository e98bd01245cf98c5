package dev.sparkmoe.notebooks;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Path;
import scala.Console$;
import scala.tools.nsc.Settings;
import scala.tools.nsc.interpreter.IMain;
import scala.tools.nsc.interpreter.Results;
import scala.tools.nsc.interpreter.shell.ReplReporterImpl;

/**
 * Scala cells (Zeppelin %spark paragraphs) in one Scala 2.13 interpreter in this JVM, configured the way Zeppelin's
 * and spark-shell's Spark interpreters configure theirs: class-based line wrappers, compiled classes written to
 * {@code outputDir}, which the SparkSession must serve to its executors ({@code spark.repl.class.outputDir}) so that
 * closures defined in paragraphs can run in tasks. Create the session after this kernel, then call
 * {@link #zeppelinPrelude()} to define {@code spark} and {@code sc} and the imports Zeppelin adds.
 */
public final class ScalaKernel implements Kernel {
    private final IMain intp;
    private final StringWriter echo = new StringWriter();
    private final Path outputDir;

    public ScalaKernel(Path outputDir) {
        this.outputDir = outputDir;
        Settings settings = new Settings();
        settings.processArgumentString("-usejavacp -Yrepl-class-based -Yrepl-outdir " + outputDir);
        intp = new IMain(settings, new ReplReporterImpl(settings, new PrintWriter(echo, true)));
        if (!intp.initializeCompiler()) {
            throw new IllegalStateException("the Scala interpreter did not start: " + echo);
        }
    }

    /** The directory the interpreter writes its classes to (give it to Spark as spark.repl.class.outputDir). */
    public Path outputDir() {
        return outputDir;
    }

    /** What Zeppelin's Spark interpreter runs before the first paragraph: spark, sc and its imports. */
    public void zeppelinPrelude() {
        String prelude = """
                val spark = org.apache.spark.sql.SparkSession.active
                val sc = spark.sparkContext
                import org.apache.spark.SparkContext._
                import spark.implicits._
                import spark.sql
                import org.apache.spark.sql.functions._
                """;
        Result r = interpret(prelude);
        if (!r.ok) {
            throw new IllegalStateException("the Zeppelin prelude failed (" + r.status + "): " + r.echo);
        }
    }

    private record Result(boolean ok, String status, String stdout, String echo) {
    }

    private Result interpret(String code) {
        echo.getBuffer().setLength(0);
        try (Capture out = new Capture()) {
            // Zeppelin binds Console.out and System.out to the paragraph's output the same way.
            Results.Result r = Console$.MODULE$.withOut(out.tee, () -> intp.interpret(code));
            String status = String.valueOf(r); // case objects Success, Error, Incomplete
            return new Result("Success".equals(status), status, out.text(), echo.toString());
        }
    }

    @Override
    public Output run(Notebook nb, Notebook.Cell cell) {
        Result r = interpret(cell.source());
        if (!r.ok) {
            String why = "Incomplete".equals(r.status) ? "incomplete code (unclosed bracket, string or expression)"
                    : "does not compile or threw:\n" + r.echo.strip() + (r.stdout.isBlank() ? ""
                    : "\n(after printing:\n" + r.stdout.strip() + ")");
            throw new CellFailedException(nb, cell, why, null);
        }
        return new Output(r.stdout, r.echo);
    }

    @Override
    public void close() {
        intp.close();
    }
}

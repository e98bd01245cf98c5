package dev.sparkmoe.parallel.tools;

import java.io.PrintStream;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import picocli.CommandLine;

/**
 * How every spark-moe command line is parsed (picocli), so that {@code train}, {@code step}, {@code launch} and the
 * rank entries share one behaviour: {@code --help} and {@code help COMMAND} print the usage and exit 0; a bad command
 * line prints the command's synopsis and ends with one {@code error:} line that names the option, the value and
 * where to look, exit 2; a command that fails at run time ends with an {@code error:} line, exit 1.
 */
public final class Cli {
    /** Exit codes. */
    public static final int OK = 0;
    public static final int FAILED = 1;
    public static final int USAGE = 2;

    private Cli() {
    }

    /** A bad command line, found while parsing or by a command's own checks; the message is the error line's text. */
    public static final class UsageException extends IllegalArgumentException {
        private static final long serialVersionUID = 1L;

        public UsageException(String message) {
            super(message);
        }
    }

    /**
     * Applies the conventions to {@code cl} and every subcommand added to it so far (call it after the last
     * {@code addSubcommand}): output streams, the usage-error handler, the run-time error handler.
     */
    public static CommandLine configure(CommandLine cl, PrintStream out, PrintStream err) {
        setVersion(cl, version());
        cl.setOut(new PrintWriter(new java.io.OutputStreamWriter(out, StandardCharsets.UTF_8), true));
        cl.setErr(new PrintWriter(new java.io.OutputStreamWriter(err, StandardCharsets.UTF_8), true));
        cl.setCaseInsensitiveEnumValuesAllowed(true);
        cl.setParameterExceptionHandler(Cli::usageError);
        cl.setExecutionExceptionHandler((ex, line, parseResult) -> {
            if (ex instanceof UsageException u) {
                return usageError(new CommandLine.ParameterException(line, u.getMessage(), u), new String[0]);
            }
            line.getErr().println("error: " + describe(ex));
            return FAILED;
        });
        return cl;
    }

    /** {@code --version}: the version Maven recorded in the jar, or that this is a build from source. */
    static String version() {
        try (java.io.InputStream in = Cli.class.getResourceAsStream(
                "/META-INF/maven/dev.sparkmoe/spark-moe-parallel/pom.properties")) {
            if (in != null) {
                java.util.Properties p = new java.util.Properties();
                p.load(in);
                return "spark-moe " + p.getProperty("version");
            }
        } catch (java.io.IOException e) {
            // fall through
        }
        return "spark-moe (built from source, classes not packaged)";
    }

    private static void setVersion(CommandLine cl, String version) {
        if (cl.getCommandSpec().version().length == 0) {
            cl.getCommandSpec().version(version);
        }
        cl.getSubcommands().values().forEach(sub -> setVersion(sub, version));
    }

    /** A command line for {@code command} with the conventions applied. */
    public static CommandLine of(Object command, PrintStream out, PrintStream err) {
        return configure(new CommandLine(command), out, err);
    }

    /** Parses and runs {@code command} (a picocli {@code Callable<Integer>} or {@code Runnable}); returns the exit code. */
    public static int execute(Object command, String[] args, PrintStream out, PrintStream err) {
        return of(command, out, err).execute(args);
    }

    /** Ends the JVM with {@code code} once both standard streams are flushed: the last call of a command's main. */
    public static void exit(int code) {
        System.out.flush();
        System.err.flush();
        System.exit(code);
    }

    /**
     * Parses {@code args} into {@code command}'s annotated fields without running it, for callers that run it
     * themselves; a bad command line throws {@link UsageException} with the same text as the error line.
     */
    public static <T> T parse(T command, String... args) {
        try {
            new CommandLine(command).setCaseInsensitiveEnumValuesAllowed(true).parseArgs(args);
        } catch (CommandLine.ParameterException e) {
            throw new UsageException(errorText(e));
        }
        return command;
    }

    /** The synopsis, then the error line (the last line the user sees). */
    static int usageError(CommandLine.ParameterException ex, String[] args) {
        CommandLine cl = ex.getCommandLine();
        PrintWriter err = cl.getErr();
        err.print("Usage: " + cl.getHelp().synopsis(0));
        CommandLine.UnmatchedArgumentException.printSuggestions(ex, err);
        err.println("error: " + errorText(ex));
        err.flush();
        return USAGE;
    }

    private static String errorText(CommandLine.ParameterException ex) {
        String name = ex.getCommandLine().getCommandSpec().qualifiedName();
        return ex.getMessage() + " (" + name + " --help lists every option)";
    }

    /** An exception's message, with its type when the message alone would not say what happened. */
    public static String describe(Throwable t) {
        String m = t.getMessage();
        if (m == null || m.isBlank()) {
            return t.getClass().getSimpleName();
        }
        return t instanceof IllegalArgumentException || t instanceof IllegalStateException ? m
                : t.getClass().getSimpleName() + ": " + m;
    }
}

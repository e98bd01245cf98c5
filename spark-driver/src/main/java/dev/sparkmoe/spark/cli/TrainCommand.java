package dev.sparkmoe.spark.cli;

import dev.sparkmoe.parallel.tools.Cli;
import dev.sparkmoe.spark.SparkMoeTrainer;
import dev.sparkmoe.spark.TrainResult;
import dev.sparkmoe.spark.TrainingFailedException;
import dev.sparkmoe.spark.config.ConfigException;
import dev.sparkmoe.spark.config.ConfigKey;
import dev.sparkmoe.spark.config.TrainConfig;
import java.io.PrintStream;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import org.slf4j.LoggerFactory;
import picocli.CommandLine;

/**
 * {@code spark-moe train CONFIG.yaml [--set key=value]... [--resume[=RUN]] [--verbose]}: loads and checks the config,
 * trains, and ends with one line: what was trained and where it went, or {@code error:} with the key, the value and
 * the fix. Stack traces go to the log file that {@code bin/spark-moe} names ({@value #LOG_FILE_PROPERTY}), or to
 * the console with {@code --verbose}.
 */
@CommandLine.Command(name = "train", mixinStandardHelpOptions = true, usageHelpAutoWidth = true, sortOptions = false,
        description = {"Train on Spark (local[N] by default) as CONFIG.yaml says, with --set overrides. Every run "
                + "gets a new folder under output.dir (run-001, run-002, ...); --resume continues one instead."},
        footer = {"", "Every key, its type and default: spark-moe keys (also the README's configuration reference)."})
final class TrainCommand implements Callable<Integer> {
    /** System property naming the log file that receives every log line and stack trace (set by bin/spark-moe). */
    static final String LOG_FILE_PROPERTY = "sparkmoe.log.file";
    /** System property that puts stack traces on the console too (--verbose sets it). */
    static final String VERBOSE_PROPERTY = "sparkmoe.verbose";

    /** Receives the stack traces of failed runs; the CLI's logging sends it to the log file only. */
    private static final String DETAILS_LOGGER = "dev.sparkmoe.details";

    private final PrintStream out;
    private final PrintStream err;

    @CommandLine.Parameters(index = "0", paramLabel = "CONFIG.yaml", description = "the run's configuration (YAML)")
    Path config;

    @CommandLine.Option(names = "--set", paramLabel = "KEY=VALUE",
            description = "override one key (repeatable), e.g. --set training.steps=200 --set layout.world_size=2")
    List<String> sets = new ArrayList<>();

    @CommandLine.Option(names = "--resume", paramLabel = "RUN", arity = "0..1", fallbackValue = "latest",
            description = "continue the newest run under output.dir (or the named run folder, e.g. run-002) from "
                    + "its newest checkpoint instead of starting a new run (the key checkpoint.resume)")
    String resume;

    @CommandLine.Option(names = {"-v", "--verbose"}, description = "print stack traces on the console too")
    boolean verbose;

    TrainCommand(PrintStream out, PrintStream err) {
        this.out = out;
        this.err = err;
    }

    @Override
    public Integer call() {
        if (verbose) {
            System.setProperty(VERBOSE_PROPERTY, "true");
        }
        String logFile = System.getProperty(LOG_FILE_PROPERTY);
        try {
            List<String> overrides = new ArrayList<>(sets);
            if (resume != null) {
                overrides.add(ConfigKey.CHECKPOINT_RESUME.key() + "=" + resume);
            }
            TrainConfig c = TrainConfig.load(config, overrides);
            TrainResult r = SparkMoeTrainer.builder().config(c).console(out).fit();
            out.printf("trained %d steps in %d attempt(s); final loss %.4f; run folder: %s (model: %s)%n", r.steps(),
                    r.attempts(), r.history().isEmpty() ? Double.NaN : r.last().loss(), r.runDir(), r.modelDir());
            return Cli.OK;
        } catch (ConfigException e) {
            return fail(e, Cli.USAGE, logFile);
        } catch (TrainingFailedException e) {
            return fail(e, Cli.FAILED, logFile);
        } catch (RuntimeException e) {
            return fail(e, Cli.FAILED, logFile);
        }
    }

    private int fail(RuntimeException e, int code, String logFile) {
        LoggerFactory.getLogger(DETAILS_LOGGER).error("spark-moe train failed", e);
        if (verbose) {
            e.printStackTrace(err);
        } else if (logFile != null && code == Cli.FAILED) {
            err.println("spark-moe: stack traces in " + logFile + " (--verbose prints them here)");
        }
        String msg = e instanceof ConfigException || e instanceof TrainingFailedException ? e.getMessage()
                : Cli.describe(e);
        err.println("error: " + msg);
        return code;
    }
}

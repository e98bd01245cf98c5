package dev.sparkmoe.spark.cli;

import dev.sparkmoe.gpu.launch.Launcher;
import dev.sparkmoe.parallel.tools.Cli;
import dev.sparkmoe.parallel.tools.StepCommand;
import dev.sparkmoe.spark.config.ConfigKey;
import java.io.PrintStream;
import java.util.concurrent.Callable;
import picocli.CommandLine;

/**
 * The command line, in-process ({@code bin/spark-moe train run.yaml}, local[N]) and under
 * {@code spark-submit --class dev.sparkmoe.spark.cli.Main job.jar train run.yaml} (the master then comes from
 * spark-submit unless the YAML sets spark.master). Subcommands: {@code train}, {@code step}, {@code launch},
 * {@code plan}, {@code keys}, {@code help}; every one parses its arguments through {@link Cli} (picocli), so all share the same
 * help and the same errors. Exit codes: 0 success, 1 failure at run time, 2 bad input (command line or config).
 */
@CommandLine.Command(name = "spark-moe", mixinStandardHelpOptions = true, usageHelpAutoWidth = true,
        description = "Train mixture-of-experts models (Qwen3-MoE) on Apache Spark.",
        footer = {"", "spark-moe help COMMAND (or spark-moe COMMAND --help) describes one command."},
        subcommands = CommandLine.HelpCommand.class)
public final class Main implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    private Main() {
    }

    public static void main(String[] args) {
        System.exit(run(args, System.out, System.err));
    }

    /** Runs one command line; returns its exit code. */
    public static int run(String[] args, PrintStream out, PrintStream err) {
        return commandLine(out, err).execute(args);
    }

    /** The whole command tree with {@link Cli}'s conventions applied. */
    static CommandLine commandLine(PrintStream out, PrintStream err) {
        CommandLine cl = new CommandLine(new Main());
        cl.addSubcommand("train", new TrainCommand(out, err));
        cl.addSubcommand("step", new StepCommand());
        cl.addSubcommand("launch", Launcher.commandLine(out, err));
        cl.addSubcommand("plan", new PlanCommand(out));
        cl.addSubcommand("keys", new Keys(out));
        return Cli.configure(cl, out, err);
    }

    /** No subcommand: the overview, as a usage error (exit 2). */
    @Override
    public Integer call() {
        CommandLine cl = spec.commandLine();
        cl.usage(cl.getErr());
        cl.getErr().println("error: no command given; spark-moe train CONFIG.yaml trains (spark-moe help lists them)");
        return Cli.USAGE;
    }

    /** {@code spark-moe keys}: the configuration reference (Markdown), the README's last section. */
    @CommandLine.Command(name = "keys", mixinStandardHelpOptions = true,
            description = "Print every configuration key with its type, default and meaning (Markdown).")
    static final class Keys implements Callable<Integer> {
        private final PrintStream out;

        Keys(PrintStream out) {
            this.out = out;
        }

        @Override
        public Integer call() {
            out.print(ConfigKey.markdownTable());
            return Cli.OK;
        }
    }
}

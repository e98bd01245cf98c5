package dev.sparkmoe.spark.cli;

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

/**
 * The command line, in-process ({@code java -cp ... dev.sparkmoe.spark.cli.Main train run.yaml}, local[N]) and under
 * {@code spark-submit --class dev.sparkmoe.spark.cli.Main job.jar train run.yaml} (the master then comes from
 * spark-submit unless the YAML sets spark.master).
 *
 * <pre>
 * train CONFIG.yaml [--set key=value ...]   train; exit 0 on success, 1 when training failed, 2 on bad input
 * keys                                       print the configuration reference (Markdown)
 * step --checkpoint DIR --inputs FILE ...     one forward/backward (and AdamW step) for model porting
 * launch --nproc N ... [-- ARGS]              N ranks on this host without Spark (the torchrun equivalent)
 * plan --model M [--world-size N ...]         per-rank memory of a run, whether it fits, what to change
 * </pre>
 */
public final class Main {
    private Main() {
    }

    public static void main(String[] args) {
        System.exit(run(args, System.out, System.err));
    }

    static final String USAGE = String.join("\n",
            "usage: spark-moe train CONFIG.yaml [--set key=value ...]   train on Spark (local[N] by default)",
            "       spark-moe step --checkpoint DIR --inputs FILE --out FILE [--adamw ...] [--dp-shard N --ep M]",
            "       spark-moe launch --nproc N [--backend auto|cpu|cuda] [--entry CLASS] [-- ARGS]   one process per GPU",
            "       spark-moe plan --model PRESET|CONFIG|DIR [--world-size N --ep M --batch B --seq T ...]   memory per GPU",
            "       spark-moe keys                                      print the configuration reference");

    public static int run(String[] args, PrintStream out, PrintStream err) {
        if (args.length == 0 || "-h".equals(args[0]) || "--help".equals(args[0])) {
            out.println(USAGE);
            return args.length == 0 ? 2 : 0;
        }
        switch (args[0]) {
            case "keys":
                out.print(ConfigKey.markdownTable());
                return 0;
            case "train":
                return train(args, out, err);
            case "step":
                return step(java.util.Arrays.copyOfRange(args, 1, args.length), err);
            case "plan":
                return PlanCommand.run(java.util.Arrays.copyOfRange(args, 1, args.length), out, err);
            case "launch":
                return dev.sparkmoe.gpu.launch.Launcher.run(java.util.Arrays.copyOfRange(args, 1, args.length), out,
                        err);
            default:
                err.println("unknown command '" + args[0] + "'\n" + USAGE);
                return 2;
        }
    }

    private static int step(String[] args, PrintStream err) {
        try {
            return dev.sparkmoe.parallel.tools.StepCommand.run(args);
        } catch (IllegalArgumentException e) {
            err.println("spark-moe step: " + e.getMessage());
            return 2;
        } catch (java.io.IOException | RuntimeException e) {
            err.println("spark-moe step failed: " + e);
            return 1;
        }
    }

    private static int train(String[] args, PrintStream out, PrintStream err) {
        String file = null;
        List<String> sets = new ArrayList<>();
        for (int i = 1; i < args.length; i++) {
            String a = args[i];
            if ("--set".equals(a)) {
                if (i + 1 >= args.length) {
                    err.println("--set needs key=value\n" + USAGE);
                    return 2;
                }
                sets.add(args[++i]);
            } else if (a.startsWith("--set=")) {
                sets.add(a.substring("--set=".length()));
            } else if (file == null && !a.startsWith("--")) {
                file = a;
            } else {
                err.println("unexpected argument '" + a + "'\n" + USAGE);
                return 2;
            }
        }
        if (file == null) {
            err.println("train needs a config file\n" + USAGE);
            return 2;
        }
        try {
            TrainConfig c = TrainConfig.load(Path.of(file), sets);
            TrainResult r = SparkMoeTrainer.builder().config(c).console(out).fit();
            out.printf("trained %d steps in %d attempt(s); final loss %.4f; model: %s%n", r.steps(), r.attempts(),
                    r.history().isEmpty() ? Double.NaN : r.last().loss(), r.modelDir());
            return 0;
        } catch (ConfigException e) {
            err.println("error: " + e.getMessage());
            return 2;
        } catch (TrainingFailedException e) {
            err.println("error: " + e.getMessage());
            return 1;
        }
    }
}

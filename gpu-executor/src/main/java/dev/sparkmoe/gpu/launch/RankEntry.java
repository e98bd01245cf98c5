package dev.sparkmoe.gpu.launch;

/**
 * A program that runs on every rank of a job started by {@link Launcher} (or anything else that starts
 * {@link RankMain}): the trainer, or {@link CollectiveSmokeEntry}. Implementations need a public no-argument
 * constructor; {@link RankMain} instantiates the class named by {@code --entry} / {@code SPARK_MOE_ENTRY}.
 */
@FunctionalInterface
public interface RankEntry {

    /**
     * Runs this rank's part of the job. Every rank calls it at about the same time with the same {@code args} (the
     * training arguments after {@code --} on the launcher's command line). The communicators in {@code ctx} are
     * owned and closed by {@link RankMain}.
     *
     * @return the process exit code: 0 for success
     */
    int run(RankContext ctx, String[] args) throws Exception;
}

package dev.sparkmoe.spark.stage;

/**
 * The control plane a rank sees: its place in the job and a way to agree with the other ranks on small facts
 * (rendezvous addresses, step counts, checkpoint files). In the barrier stage it is {@code BarrierTaskContext}; in
 * tests it can be anything that behaves alike.
 */
public interface RankControl {

    int rank();

    int worldSize();

    /** Key of this stage attempt: application id, run id, stage id and stage attempt number. */
    String jobKey();

    /** Collective: every rank's message, in rank order. */
    String[] allGather(String message);

    /** Collective: returns once every rank has called it. */
    void barrier();

    /** True once Spark has asked this task to stop (a peer failed, the job was cancelled). */
    boolean killed();

    /** GPU addresses Spark assigned to this task (empty without GPU scheduling). */
    String[] gpus();
}

package dev.sparkmoe.spark.stage;

import dev.sparkmoe.spark.config.ConfigException;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkContext;
import org.slf4j.LoggerFactory;

/**
 * Up-front checks that the barrier stage can be scheduled at all: enough task slots for one task per rank, GPUs
 * when they are asked for, and no dynamic allocation (barrier stages need a fixed set of executors). Without these,
 * Spark would retry scheduling for minutes and then fail with a generic message.
 */
public final class SlotCheck {
    private static final Pattern LOCAL = Pattern.compile("local\\[(\\*|\\d+)(?:,\\s*(\\d+))?]");
    private static final Pattern LOCAL_CLUSTER = Pattern.compile("local-cluster\\[(\\d+),\\s*(\\d+),\\s*(\\d+)]");

    private SlotCheck() {
    }

    /** Task slots by master URL and conf; -1 when they cannot be known before executors register. */
    public static int slots(SparkContext sc) {
        SparkConf conf = sc.getConf();
        String master = sc.master();
        int taskCpus = conf.getInt("spark.task.cpus", 1);
        int cores;
        Matcher m = LOCAL.matcher(master);
        Matcher lc = LOCAL_CLUSTER.matcher(master);
        if ("local".equals(master)) {
            cores = 1;
        } else if (m.matches()) {
            cores = "*".equals(m.group(1)) ? Runtime.getRuntime().availableProcessors() : Integer.parseInt(m.group(1));
        } else if (lc.matches()) {
            cores = Integer.parseInt(lc.group(1)) * Integer.parseInt(lc.group(2));
        } else {
            // the status tracker lists the driver too
            int executors = Math.max(0, sc.statusTracker().getExecutorInfos().length - 1);
            int perExecutor = conf.getInt("spark.executor.cores", -1);
            if (executors == 0 && conf.contains("spark.executor.instances")) {
                executors = conf.getInt("spark.executor.instances", 0);
            }
            if (executors == 0 || perExecutor < 0) {
                return -1;
            }
            int slots = executors * (perExecutor / taskCpus);
            double taskGpu = conf.getDouble("spark.task.resource.gpu.amount", 0);
            if (taskGpu > 0) {
                int execGpus = conf.getInt("spark.executor.resource.gpu.amount", 0);
                slots = Math.min(slots, executors * (int) Math.floor(execGpus / taskGpu));
            }
            return slots;
        }
        return cores / taskCpus;
    }

    /**
     * Task slots the registered executors offer right now (what Spark's own barrier check counts: cores and GPUs of
     * the default resource profile); -1 when it cannot be known.
     */
    public static int freeSlots(SparkContext sc) {
        try {
            return sc.maxNumConcurrentTasks(sc.resourceProfileManager().defaultResourceProfile());
        } catch (RuntimeException e) {
            return -1;
        }
    }

    public static void check(SparkContext sc, int worldSize, String backend) {
        SparkConf conf = sc.getConf();
        if (conf.getBoolean("spark.dynamicAllocation.enabled", false)) {
            throw new ConfigException("spark.dynamicAllocation.enabled = true: barrier stages need a fixed set of "
                    + "executors; set spark.dynamicAllocation.enabled=false for this job");
        }
        if ("cuda".equals(backend) && !sc.isLocal() && conf.getDouble("spark.task.resource.gpu.amount", 0) <= 0) {
            throw new ConfigException("training.backend = cuda, but spark.task.resource.gpu.amount is not set: set it "
                    + "to 1 (and spark.executor.resource.gpu.amount with a discovery script) so that each rank gets a "
                    + "GPU");
        }
        int cores = Runtime.getRuntime().availableProcessors();
        if (sc.isLocal() && worldSize > 2 * cores) {
            LoggerFactory.getLogger(SlotCheck.class).warn("layout.world_size = {} runs {} ranks on this machine's {} "
                    + "cores ({}), more than two a core: they take turns on the cores and wait for each other at every "
                    + "collective, which is fine for trying a layout and slow for training; to train here, use "
                    + "layout.world_size <= {} (with a layout.ep that divides it)", worldSize, worldSize, cores,
                    sc.master(), 2 * cores);
        }
        int slots = slots(sc);
        if (slots >= 0 && slots < worldSize) {
            throw new ConfigException("layout.world_size = " + worldSize + " needs " + worldSize + " concurrent task "
                    + "slots, but master " + sc.master() + " offers " + slots + " (cores / spark.task.cpus = "
                    + conf.getInt("spark.task.cpus", 1) + (conf.contains("spark.task.resource.gpu.amount")
                    ? ", limited by GPUs" : "") + "); lower layout.world_size or add executors/cores");
        }
    }
}

package dev.sparkmoe.spark.kryo;

import com.esotericsoftware.kryo.Kryo;
import com.esotericsoftware.kryo.serializers.JavaSerializer;
import org.apache.spark.serializer.KryoRegistrator;

/**
 * Registers every class of ours that Spark's serializer moves: shuffled documents, task results, collected
 * statistics. Tests run with {@code spark.kryo.registrationRequired=true} to prove the list is complete.
 */
public final class SparkMoeKryoRegistrator implements KryoRegistrator {
    @Override
    public void registerClasses(Kryo kryo) {
        kryo.register(int[].class);
        kryo.register(long[].class);
        kryo.register(int[][].class);
        kryo.register(java.util.ArrayList.class);
        kryo.register(java.util.Collections.emptyList().getClass());
        kryo.register(java.util.List.of().getClass());
        kryo.register(java.util.List.of(1).getClass());
        kryo.register(java.util.List.of(1, 2, 3).getClass());
        // Kryo 4's field serializer cannot read record fields (no Unsafe offsets on records): records go through
        // Java serialization inside Kryo; they are few and small (per-rank results and statistics).
        JavaSerializer java = new JavaSerializer();
        kryo.register(dev.sparkmoe.parallel.train.StepMetrics.class, java);
        kryo.register(dev.sparkmoe.spark.data.RankDataStats.class, java);
        kryo.register(dev.sparkmoe.spark.data.RankDataStats[].class);
        kryo.register(dev.sparkmoe.spark.stage.RankOutcome.class, java);
        kryo.register(dev.sparkmoe.spark.stage.RankOutcome[].class);
    }
}

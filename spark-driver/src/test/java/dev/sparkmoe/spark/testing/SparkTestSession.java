package dev.sparkmoe.spark.testing;

import dev.sparkmoe.spark.kryo.SparkMoeKryoRegistrator;
import org.apache.spark.sql.SparkSession;

/** The one local[4] session a test class shares: Kryo with registration required, no UI, fast heartbeats. */
public final class SparkTestSession {
    private SparkTestSession() {
    }

    public static SparkSession start() {
        return SparkSession.builder()
                .master("local[4]")
                .appName("spark-moe-test")
                .config("spark.ui.enabled", "false")
                .config("spark.serializer", "org.apache.spark.serializer.KryoSerializer")
                .config("spark.kryo.registrator", SparkMoeKryoRegistrator.class.getName())
                .config("spark.kryo.registrationRequired", "true")
                .config("spark.sql.shuffle.partitions", "4")
                .config("spark.default.parallelism", "4")
                .config("spark.executor.heartbeatInterval", "1s")
                .config("spark.driver.host", "127.0.0.1")
                .config("spark.driver.bindAddress", "127.0.0.1")
                .getOrCreate();
    }
}

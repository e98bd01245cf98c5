package dev.sparkmoe.spark.stage;

import java.io.Serializable;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.function.FlatMapFunction;
import org.apache.spark.rdd.RDD;
import scala.collection.Iterator;
import scala.jdk.javaapi.CollectionConverters;
import scala.reflect.ClassTag;
import scala.reflect.ClassTag$;
import scala.runtime.AbstractFunction1;

/** The Java API has no barrier(): these adapt a Java partition function to {@code RDD.barrier().mapPartitions}. */
public final class ScalaAdapters {
    private ScalaAdapters() {
    }

    /** {@code rdd.barrier().mapPartitions(f)} for a Java function. */
    public static <T, S> JavaRDD<S> barrierMapPartitions(RDD<T> rdd, FlatMapFunction<java.util.Iterator<T>, S> f,
                                                         Class<S> out) {
        ClassTag<S> tag = ClassTag$.MODULE$.apply(out);
        RDD<S> mapped = rdd.barrier().mapPartitions(new PartitionFn<>(f), false, tag);
        return JavaRDD.fromRDD(mapped, tag);
    }

    static final class PartitionFn<T, S> extends AbstractFunction1<Iterator<T>, Iterator<S>> implements Serializable {
        private static final long serialVersionUID = 1L;
        private final FlatMapFunction<java.util.Iterator<T>, S> f;

        PartitionFn(FlatMapFunction<java.util.Iterator<T>, S> f) {
            this.f = f;
        }

        @Override
        public Iterator<S> apply(Iterator<T> it) {
            try {
                return CollectionConverters.asScala(f.call(CollectionConverters.asJava(it)));
            } catch (RuntimeException | Error e) {
                throw e;
            } catch (Exception e) {
                throw new RuntimeException(e);
            }
        }
    }
}

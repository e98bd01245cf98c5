package dev.sparkmoe.spark.data;

import dev.sparkmoe.spark.config.ConfigException;
import dev.sparkmoe.spark.config.ConfigKey;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Iterator;
import java.util.List;
import org.apache.spark.Partitioner;
import org.apache.spark.api.java.JavaPairRDD;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.ArrayType;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;
import scala.Tuple2;

/**
 * Driver-side plumbing from a DataFrame or RDD to "documents per rank": reads data.path, picks and checks the
 * column, tokenizes on the executors, and deals document i to rank i mod world_size, kept in row order. The
 * assignment depends only on the row order of the input, never on shuffle timing, so every attempt of the barrier
 * stage sees the same documents on the same rank.
 */
public final class Documents {
    private Documents() {
    }

    public static Dataset<Row> read(SparkSession spark, String path, String format) {
        mustExist(spark, path);
        try {
            switch (format) {
                case "text": return spark.read().text(path);
                case "json": return spark.read().json(path);
                case "parquet": return spark.read().parquet(path);
                default: throw new ConfigException(ConfigKey.DATA_FORMAT.key(), format, "use text, parquet or json");
            }
        } catch (ConfigException e) {
            throw e;
        } catch (Exception e) { // Spark's AnalysisException is checked in Java's eyes, and thrown anyway
            throw new ConfigException(ConfigKey.DATA_PATH.key(), path, "cannot read it as " + format + " ("
                    + String.valueOf(e.getMessage()).lines().findFirst().orElse("") + "); check data.format");
        }
    }

    /** A data.path that matches nothing fails here, naming where it was looked for. */
    private static void mustExist(SparkSession spark, String path) {
        org.apache.hadoop.fs.Path p = new org.apache.hadoop.fs.Path(path);
        String where = path;
        try {
            org.apache.hadoop.fs.FileSystem fs = p.getFileSystem(spark.sparkContext().hadoopConfiguration());
            where = fs.makeQualified(p).toString();
            org.apache.hadoop.fs.FileStatus[] found = fs.globStatus(p);
            if (found != null && found.length > 0) {
                return;
            }
        } catch (java.io.IOException | IllegalArgumentException e) {
            throw new ConfigException(ConfigKey.DATA_PATH.key(), path, "cannot look it up (" + e.getMessage()
                    + "); give a file, directory or glob URI on a file system this job can reach");
        }
        throw new ConfigException(ConfigKey.DATA_PATH.key(), path, "no such file or directory (looked for "
                + where + "); point data.path at the training data (a file, a directory or a glob; relative "
                + "paths start from the current directory)");
    }

    /** Token ids of every row of {@code column} (tokenized when it is a string column), in row order. */
    public static JavaRDD<int[]> tokenIds(Dataset<Row> ds, String column, Tokenizer tokenizer) {
        StructType schema = ds.schema();
        String col = column;
        List<String> names = Arrays.asList(schema.fieldNames());
        if ("auto".equals(col)) {
            col = names.contains("input_ids") ? "input_ids" : names.contains("text") ? "text"
                    : names.contains("value") ? "value" : null;
            if (col == null) {
                throw new ConfigException(ConfigKey.DATA_COLUMN.key(), column, "the data has no input_ids, text or "
                        + "value column; its columns are " + names + "; set data.column to one of them");
            }
        }
        if (!names.contains(col)) {
            throw new ConfigException(ConfigKey.DATA_COLUMN.key(), col, "no such column; the data's columns are "
                    + names);
        }
        StructField f = schema.apply(col);
        DataType t = f.dataType();
        Dataset<Row> one = ds.select(col);
        if (t instanceof ArrayType at) {
            DataType e = at.elementType();
            if (!(e.equals(DataTypes.IntegerType) || e.equals(DataTypes.LongType) || e.equals(DataTypes.ShortType))) {
                throw new ConfigException(ConfigKey.DATA_COLUMN.key(), col, "is array<" + e.simpleString()
                        + ">; token ids must be array<int> or array<bigint>");
            }
            return one.javaRDD().map(Documents::idsOf);
        }
        if (t.equals(DataTypes.StringType)) {
            Tokenizer tok = tokenizer;
            return one.javaRDD().map(r -> r.isNullAt(0) ? new int[0] : tok.encode(r.getString(0)));
        }
        throw new ConfigException(ConfigKey.DATA_COLUMN.key(), col, "has type " + t.simpleString()
                + "; expected array<int> of token ids or a string to tokenize");
    }

    static int[] idsOf(Row r) {
        if (r.isNullAt(0)) {
            return new int[0];
        }
        List<Object> l = r.getList(0);
        int[] ids = new int[l.size()];
        for (int i = 0; i < ids.length; i++) {
            Object o = l.get(i);
            if (o == null) {
                throw new IllegalArgumentException("null token id at position " + i + " of a row");
            }
            long v = ((Number) o).longValue();
            // out-of-range ids are reported by validation against the vocabulary; keep them visible
            ids[i] = v > Integer.MAX_VALUE ? Integer.MAX_VALUE : v < Integer.MIN_VALUE ? Integer.MIN_VALUE : (int) v;
        }
        return ids;
    }

    /** Document i (in row order) goes to partition i mod world, partitions sorted by i. */
    public static JavaPairRDD<Long, int[]> dealToRanks(JavaRDD<int[]> docs, int world) {
        return docs.zipWithIndex().mapToPair(t -> new Tuple2<>(t._2(), t._1()))
                .repartitionAndSortWithinPartitions(new ModPartitioner(world));
    }

    /**
     * The documents of {@code dataRanks} data ranks ({@link #dealToRanks}) regrouped onto {@code world} partitions,
     * data rank r on partition r mod world, each partition in document order (so each data rank's documents stay in
     * order): the input of an attempt resumed on fewer ranks.
     */
    public static JavaPairRDD<Long, int[]> regroup(JavaPairRDD<Long, int[]> byRank, int dataRanks, int world) {
        return byRank.repartitionAndSortWithinPartitions(new RegroupPartitioner(dataRanks, world));
    }

    /** Per-rank statistics (a small Spark job), in rank order; one entry per rank even when empty. */
    public static List<RankDataStats> stats(JavaPairRDD<Long, int[]> byRank, SequencePacker packer) {
        int w = packer.window();
        List<RankDataStats> s = new ArrayList<>(byRank.mapPartitionsWithIndex((rank, it) -> {
            long docs = 0;
            long tokens = 0;
            int min = Integer.MAX_VALUE;
            int max = -1;
            long maxDoc = -1;
            long shortDocs = 0;
            long firstShort = -1;
            int firstShortLen = 0;
            while (it.hasNext()) {
                Tuple2<Long, int[]> d = it.next();
                int[] ids = d._2();
                docs++;
                tokens += ids.length;
                for (int id : ids) {
                    min = Math.min(min, id);
                    if (id > max) {
                        max = id;
                        maxDoc = d._1();
                    }
                }
                if (ids.length < w) {
                    if (firstShort < 0 || d._1() < firstShort) {
                        firstShort = d._1();
                        firstShortLen = ids.length;
                    }
                    shortDocs++;
                }
            }
            RankDataStats st = new RankDataStats(rank, docs, tokens, min, max, maxDoc, shortDocs, firstShort,
                    firstShortLen, packer.countSequences(docs, tokens, docs - shortDocs));
            return List.of(st).iterator();
        }, true).collect());
        s.sort((a, b) -> Integer.compare(a.rank(), b.rank()));
        return s;
    }

    /** The documents of one partition, in order (used inside the barrier task). */
    public static Iterator<int[]> values(Iterator<Tuple2<Long, int[]>> it) {
        return new Iterator<>() {
            @Override
            public boolean hasNext() {
                return it.hasNext();
            }

            @Override
            public int[] next() {
                return it.next()._2();
            }
        };
    }

    /** (Key mod dataRanks) mod world. */
    public static final class RegroupPartitioner extends Partitioner {
        private static final long serialVersionUID = 1L;
        private final int dataRanks;
        private final int world;

        public RegroupPartitioner(int dataRanks, int world) {
            this.dataRanks = dataRanks;
            this.world = world;
        }

        @Override
        public int numPartitions() {
            return world;
        }

        @Override
        public int getPartition(Object key) {
            return (int) Math.floorMod(Math.floorMod((Long) key, (long) dataRanks), (long) world);
        }

        @Override
        public boolean equals(Object o) {
            return o instanceof RegroupPartitioner p && p.dataRanks == dataRanks && p.world == world;
        }

        @Override
        public int hashCode() {
            return dataRanks * 31 + world;
        }
    }

    /** Key mod n. */
    public static final class ModPartitioner extends Partitioner {
        private static final long serialVersionUID = 1L;
        private final int n;

        public ModPartitioner(int n) {
            this.n = n;
        }

        @Override
        public int numPartitions() {
            return n;
        }

        @Override
        public int getPartition(Object key) {
            return (int) Math.floorMod((Long) key, (long) n);
        }

        @Override
        public boolean equals(Object o) {
            return o instanceof ModPartitioner p && p.n == n;
        }

        @Override
        public int hashCode() {
            return n;
        }
    }
}

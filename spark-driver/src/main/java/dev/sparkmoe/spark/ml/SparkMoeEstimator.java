package dev.sparkmoe.spark.ml;

import dev.sparkmoe.spark.SparkMoeTrainer;
import dev.sparkmoe.spark.TrainResult;
import dev.sparkmoe.spark.config.ConfigKey;
import java.util.LinkedHashMap;
import java.util.Map;
import org.apache.spark.ml.Estimator;
import org.apache.spark.ml.param.ParamMap;
import org.apache.spark.ml.util.Identifiable$;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.types.ArrayType;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;

/**
 * spark-moe as a spark.ml {@link Estimator}, for the end of a {@code Pipeline}: {@code fit} trains on the input column
 * (text, tokenized as {@code data.tokenizer} says, or token ids as array&lt;int&gt;) with the settings given by
 * {@link #setting} (the keys of the configuration reference, e.g. {@code model.preset}, {@code layout.world_size},
 * {@code output.dir}), and returns a {@link SparkMoeModel} that scores rows with the trained model.
 */
public final class SparkMoeEstimator extends Estimator<SparkMoeModel> {
    private static final long serialVersionUID = 1L;
    private final String uid;
    private final Map<String, Object> settings = new LinkedHashMap<>();
    private String inputCol = "text";

    public SparkMoeEstimator() {
        this(Identifiable$.MODULE$.randomUID("sparkMoe"));
    }

    public SparkMoeEstimator(String uid) {
        this.uid = uid;
    }

    @Override
    public String uid() {
        return uid;
    }

    /** A training setting, as in the YAML file (validated, with suggestions for unknown keys, when fit runs). */
    public SparkMoeEstimator setting(String key, Object value) {
        settings.put(key, value);
        return this;
    }

    public Map<String, Object> settings() {
        return Map.copyOf(settings);
    }

    /** The column to train on: a string column (text) or array&lt;int&gt; / array&lt;bigint&gt; (token ids). */
    public SparkMoeEstimator setInputCol(String col) {
        this.inputCol = col;
        return this;
    }

    public String getInputCol() {
        return inputCol;
    }

    /** Whether {@code type} is text (true) or token ids (false); anything else is an error naming the column. */
    static boolean isText(String col, DataType type) {
        if (type.equals(DataTypes.StringType)) {
            return true;
        }
        if (type instanceof ArrayType) {
            DataType e = ((ArrayType) type).elementType();
            if (e.equals(DataTypes.IntegerType) || e.equals(DataTypes.LongType)) {
                return false;
            }
        }
        throw new IllegalArgumentException("input column '" + col + "' has type " + type.simpleString()
                + "; spark-moe trains on a string column (text) or array<int>/array<bigint> (token ids)");
    }

    static StructField field(StructType schema, String col) {
        for (StructField f : schema.fields()) {
            if (f.name().equals(col)) {
                return f;
            }
        }
        throw new IllegalArgumentException("input column '" + col + "' is not in the data; columns: "
                + String.join(", ", schema.fieldNames()) + " (setInputCol names it)");
    }

    @Override
    public StructType transformSchema(StructType schema) {
        StructField f = field(schema, inputCol);
        isText(inputCol, f.dataType());
        return schema;
    }

    @Override
    public SparkMoeModel fit(Dataset<?> dataset) {
        transformSchema(dataset.schema());
        boolean text = isText(inputCol, field(dataset.schema(), inputCol).dataType());
        Dataset<Row> in = dataset.toDF().select(dataset.col(inputCol).as(text ? "text" : "input_ids"));
        SparkMoeTrainer.Builder b = SparkMoeTrainer.builder().spark(dataset.sparkSession()).dataset(in);
        settings.forEach(b::set);
        b.set(ConfigKey.DATA_COLUMN.key(), text ? "text" : "input_ids");
        TrainResult r = b.fit();
        Object tokenizer = settings.getOrDefault(ConfigKey.DATA_TOKENIZER.key(), "byte");
        SparkMoeModel model = new SparkMoeModel(uid, r, inputCol, String.valueOf(tokenizer));
        model.setParent(this);
        return model;
    }

    @Override
    public SparkMoeEstimator copy(ParamMap extra) {
        SparkMoeEstimator c = new SparkMoeEstimator(uid);
        c.settings.putAll(settings);
        c.inputCol = inputCol;
        return c;
    }
}

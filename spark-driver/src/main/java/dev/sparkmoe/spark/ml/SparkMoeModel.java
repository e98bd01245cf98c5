package dev.sparkmoe.spark.ml;

import dev.sparkmoe.parallel.train.StepMetrics;
import dev.sparkmoe.spark.TrainResult;
import dev.sparkmoe.spark.ckpt.SerializableHadoopConf;
import java.util.List;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.ml.Model;
import org.apache.spark.ml.param.ParamMap;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;

/**
 * A model trained by {@link SparkMoeEstimator}: where it was written (Hugging Face layout), its training history, and
 * {@link #transform}, which adds a column {@code loss}: each row's mean next-token cross-entropy under the model
 * (null for rows with fewer than two tokens). Scoring runs on the executors with the CPU backend, the model loaded
 * once per partition; long rows are scored in windows of the model's context length.
 */
public final class SparkMoeModel extends Model<SparkMoeModel> {
    private static final long serialVersionUID = 1L;
    public static final String LOSS_COL = "loss";
    private final String uid;
    private final TrainResult result;
    private final String inputCol;
    private final String tokenizer;

    SparkMoeModel(String uid, TrainResult result, String inputCol, String tokenizer) {
        this.uid = uid;
        this.result = result;
        this.inputCol = inputCol;
        this.tokenizer = tokenizer;
    }

    @Override
    public String uid() {
        return uid;
    }

    /** URI of the trained model (config.json + model.safetensors), loadable by transformers. */
    public String modelDir() {
        return result.modelDir();
    }

    public List<StepMetrics> history() {
        return result.history();
    }

    @Override
    public StructType transformSchema(StructType schema) {
        StructField f = SparkMoeEstimator.field(schema, inputCol);
        SparkMoeEstimator.isText(inputCol, f.dataType());
        for (String n : schema.fieldNames()) {
            if (n.equals(LOSS_COL)) {
                throw new IllegalArgumentException("the data already has a column '" + LOSS_COL
                        + "'; drop or rename it before scoring");
            }
        }
        return schema.add(LOSS_COL, DataTypes.DoubleType, true);
    }

    @Override
    public Dataset<Row> transform(Dataset<?> dataset) {
        StructType out = transformSchema(dataset.schema());
        int col = dataset.schema().fieldIndex(inputCol);
        boolean text = SparkMoeEstimator.isText(inputCol, dataset.schema().fields()[col].dataType());
        SerializableHadoopConf conf = new SerializableHadoopConf(
                dataset.sparkSession().sparkContext().hadoopConfiguration());
        JavaRDD<Row> scored = dataset.toDF().javaRDD()
                .mapPartitions(new RowScorer(result.modelDir(), conf, tokenizer, col, text));
        return dataset.sparkSession().createDataFrame(scored, out);
    }

    @Override
    public SparkMoeModel copy(ParamMap extra) {
        SparkMoeModel c = new SparkMoeModel(uid, result, inputCol, tokenizer);
        c.setParent(parent());
        return c;
    }
}

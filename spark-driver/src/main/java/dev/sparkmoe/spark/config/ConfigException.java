package dev.sparkmoe.spark.config;

/** A configuration or input error found before training starts. The message names the key, the value and a fix. */
public class ConfigException extends IllegalArgumentException {
    private static final long serialVersionUID = 1L;

    public ConfigException(String message) {
        super(message);
    }

    public ConfigException(String key, Object value, String fix) {
        super(key + " = " + (value instanceof String ? "'" + value + "'" : String.valueOf(value)) + ": " + fix);
    }
}

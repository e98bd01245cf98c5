package dev.sparkmoe.gpu.comm;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.FileAttribute;
import java.nio.file.attribute.PosixFilePermission;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.GeneralSecurityException;
import java.security.SecureRandom;
import java.util.Arrays;
import java.util.Base64;
import java.util.EnumSet;
import java.util.Map;
import java.util.Set;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * A per-job shared secret (at least 16 random bytes) that every rank of a job holds and that strangers don't. Ranks
 * prove possession to each other with HMAC-SHA256 challenge-response; the secret itself never travels.
 *
 * <p>Hand it to child processes through the environment variable {@link #ENV} (text from {@link #encode()}) or a
 * file with owner-only permissions ({@link #writeTo(Path)}, named by {@link #ENV_FILE}); never through a command
 * line. {@link #toString()} is redacted, and no exception message or log line of this package contains the secret.
 */
public final class JobSecret {

    /** Environment variable holding the base64 text of the secret. */
    public static final String ENV = "SPARK_MOE_JOB_SECRET";
    /** Environment variable holding the path of a 0600 file with the base64 text of the secret. */
    public static final String ENV_FILE = "SPARK_MOE_JOB_SECRET_FILE";
    /** Minimum secret length in bytes. */
    public static final int MIN_BYTES = 16;
    /** Length of generated secrets in bytes. */
    public static final int DEFAULT_BYTES = 32;

    private static final SecureRandom RANDOM = new SecureRandom();
    private static final Set<PosixFilePermission> OWNER_ONLY =
            EnumSet.of(PosixFilePermission.OWNER_READ, PosixFilePermission.OWNER_WRITE);

    private final byte[] key;

    private JobSecret(byte[] key) {
        this.key = key;
    }

    /** A fresh secret of {@link #DEFAULT_BYTES} bytes from {@link SecureRandom}. */
    public static JobSecret generate() {
        byte[] k = new byte[DEFAULT_BYTES];
        RANDOM.nextBytes(k);
        return new JobSecret(k);
    }

    /** Wraps (a copy of) raw secret bytes; at least {@link #MIN_BYTES}. */
    public static JobSecret of(byte[] raw) {
        if (raw == null || raw.length < MIN_BYTES) {
            throw new IllegalArgumentException("job secret must have at least " + MIN_BYTES + " bytes, got "
                    + (raw == null ? "null" : raw.length + " bytes") + "; hint: use JobSecret.generate()");
        }
        return new JobSecret(raw.clone());
    }

    /** Base64 text of the secret, for an environment variable or a file. Treat the result as the secret itself. */
    public String encode() {
        return Base64.getEncoder().encodeToString(key);
    }

    /** Parses the text of {@link #encode()} (surrounding whitespace ignored). */
    public static JobSecret decode(String text) {
        if (text == null) {
            throw new IllegalArgumentException("job secret text is null");
        }
        byte[] raw;
        try {
            raw = Base64.getDecoder().decode(text.strip());
        } catch (IllegalArgumentException e) {
            // never echo the text: it may be (most of) a secret
            throw new IllegalArgumentException("job secret text is not valid base64 (" + text.strip().length()
                    + " characters); hint: produce it with JobSecret.encode()");
        }
        try {
            return of(raw);
        } finally {
            Arrays.fill(raw, (byte) 0);
        }
    }

    /** Number of secret bytes. */
    public int length() {
        return key.length;
    }

    /**
     * Writes the encoded secret to a new file created with permissions 0600 (atomically, where the file system is
     * POSIX). Fails if the file exists.
     */
    public Path writeTo(Path file) {
        try {
            FileAttribute<?>[] attrs = posix(file.toAbsolutePath().getParent())
                    ? new FileAttribute<?>[] {PosixFilePermissions.asFileAttribute(OWNER_ONLY)}
                    : new FileAttribute<?>[0];
            Files.createFile(file, attrs);
            Files.write(file, encode().getBytes(StandardCharsets.US_ASCII), StandardOpenOption.TRUNCATE_EXISTING);
            return file;
        } catch (FileAlreadyExistsException e) {
            throw new IllegalStateException("refusing to overwrite existing secret file " + file
                    + "; hint: write a job secret to a fresh path");
        } catch (IOException e) {
            throw new UncheckedIOException("cannot write job secret file " + file, e);
        }
    }

    /** Writes the encoded secret to a fresh 0600 temporary file, which the caller deletes when the job ends. */
    public Path writeTempFile() {
        try {
            Path dir = Path.of(System.getProperty("java.io.tmpdir"));
            Path f = posix(dir)
                    ? Files.createTempFile(dir, "spark-moe-secret-", ".b64", PosixFilePermissions.asFileAttribute(OWNER_ONLY))
                    : Files.createTempFile(dir, "spark-moe-secret-", ".b64");
            Files.write(f, encode().getBytes(StandardCharsets.US_ASCII), StandardOpenOption.TRUNCATE_EXISTING);
            return f;
        } catch (IOException e) {
            throw new UncheckedIOException("cannot write a temporary job secret file", e);
        }
    }

    /**
     * Reads a secret written by {@link #writeTo(Path)}. On POSIX file systems the file must not be readable or
     * writable by group or others.
     */
    public static JobSecret readFrom(Path file) {
        try {
            if (posix(file)) {
                Set<PosixFilePermission> perms = Files.getPosixFilePermissions(file);
                Set<PosixFilePermission> extra = EnumSet.copyOf(perms);
                extra.removeAll(EnumSet.of(PosixFilePermission.OWNER_READ, PosixFilePermission.OWNER_WRITE,
                        PosixFilePermission.OWNER_EXECUTE));
                if (!extra.isEmpty()) {
                    throw new IllegalStateException("job secret file " + file + " has permissions "
                            + PosixFilePermissions.toString(perms) + "; group/others must have none; hint: chmod 600 "
                            + file);
                }
            }
            return decode(new String(Files.readAllBytes(file), StandardCharsets.US_ASCII));
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read job secret file " + file, e);
        }
    }

    /**
     * The secret from an environment map: {@link #ENV} (base64 text) or else {@link #ENV_FILE} (a path). Fails,
     * naming both variables, when neither is set.
     */
    public static JobSecret fromEnvironment(Map<String, String> env) {
        String text = env.get(ENV);
        if (text != null && !text.isBlank()) {
            return decode(text);
        }
        String file = env.get(ENV_FILE);
        if (file != null && !file.isBlank()) {
            return readFrom(Path.of(file));
        }
        throw new IllegalStateException("no job secret: neither " + ENV + " nor " + ENV_FILE
                + " is set; hint: the launcher generates one with JobSecret.generate() and passes it to every rank");
    }

    /** The secret from this process's environment, see {@link #fromEnvironment(Map)}. */
    public static JobSecret fromEnvironment() {
        return fromEnvironment(System.getenv());
    }

    /** HMAC-SHA256 keyed with the secret over the concatenation of {@code parts}. */
    public byte[] hmac(byte[]... parts) {
        try {
            Mac mac = Mac.getInstance("HmacSHA256");
            mac.init(new SecretKeySpec(key, "HmacSHA256"));
            for (byte[] p : parts) {
                mac.update(p);
            }
            return mac.doFinal();
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("HmacSHA256 unavailable in this JVM", e);
        }
    }

    private static boolean posix(Path p) {
        try {
            return p != null && Files.getFileStore(Files.exists(p) ? p : p.toAbsolutePath().getParent())
                    .supportsFileAttributeView("posix");
        } catch (IOException e) {
            return false;
        }
    }

    /** Redacted: never shows the secret. */
    @Override
    public String toString() {
        return "JobSecret[redacted, " + key.length + " bytes]";
    }
}

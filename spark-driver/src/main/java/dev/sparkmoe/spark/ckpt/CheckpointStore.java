package dev.sparkmoe.spark.ckpt;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import dev.sparkmoe.core.tensor.Tensor;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.zip.CRC32;
import java.util.zip.CheckedInputStream;
import java.util.zip.CheckedOutputStream;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;

/**
 * Checkpoints on any Hadoop file system (file:, hdfs:, s3a:, ...).
 *
 * <pre>
 * DIR/step-00000040/rank-00000.state ... rank-NNNNN.state   every rank's RankTrainer.rankState()
 *                  /manifest.json                         step, layout, data position, files with sizes and CRCs
 *                  /_COMMITTED                            written last; its text names the step and manifest CRC
 * DIR/_tmp/step-00000040-JOBKEY/...                       where a checkpoint is written before it is moved in place
 * </pre>
 *
 * A rank file's check is the CRC32 of its whole bytes in the manifest, computed as it is written and verified as it
 * is read (a checksummed file system's {@code .crc} is not written for it; see {@link #dataFs}).
 *
 * Protocol (one checkpoint): every rank writes its state into the temporary directory ({@link #writeRank}); the
 * ranks exchange file descriptions; rank 0 writes the manifest, moves the directory to its final name and writes
 * {@code _COMMITTED} ({@link #commit}). A checkpoint is complete only once its marker holds the expected text and
 * every file the manifest lists has its recorded length, so a crash at any point leaves either the previous
 * checkpoints alone or a directory that {@link #latest} skips.
 */
public final class CheckpointStore implements Serializable {
    private static final long serialVersionUID = 1L;
    private static final Pattern STEP_DIR = Pattern.compile("step-(\\d{8,})");
    static final ObjectMapper JSON = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);
    public static final String MARKER = "_COMMITTED";
    /** Buffer of the Hadoop streams of rank files: the checksummed local file system's own default is 4 KB. */
    static final int IO_BUFFER_BYTES = 1 << 20;

    private final String dir;
    private final SerializableHadoopConf conf;

    public CheckpointStore(String dir, Configuration conf) {
        this.dir = dir;
        this.conf = new SerializableHadoopConf(conf);
    }

    public String dir() {
        return dir;
    }

    private FileSystem fs() throws IOException {
        return new Path(dir).getFileSystem(conf.get());
    }

    /**
     * The file system that rank files are written and read through: a checksummed one's raw file system, because the
     * manifest's CRC32 of every whole file, computed in the same pass, is the check; Hadoop's CRC per 512 bytes in a
     * {@code .crc} file beside it would check the same bytes a second time, 512 at a time. Files written with a
     * {@code .crc} (by earlier versions) read the same way. The manifest, the marker and every other file keep the file system's own checksums.
     */
    private FileSystem dataFs() throws IOException {
        FileSystem fs = fs();
        return fs instanceof org.apache.hadoop.fs.ChecksumFileSystem c ? c.getRawFileSystem() : fs;
    }

    static String stepName(long step) {
        return String.format("step-%08d", step);
    }

    static String rankFile(int rank) {
        return String.format("rank-%05d.state", rank);
    }

    public Path stepPath(long step) {
        return new Path(dir, stepName(step));
    }

    Path tmpPath(long step, String jobKey) {
        return new Path(new Path(dir, "_tmp"), stepName(step) + "-" + jobKey.replaceAll("[^A-Za-z0-9_.-]", "_"));
    }

    /** What one rank wrote. */
    public record FileInfo(String name, long bytes, long crc32) implements Serializable {
    }

    /**
     * The manifest of a committed checkpoint.
     *
     * @param step                  optimizer steps taken
     * @param worldSize             ranks that wrote it
     * @param ep                    expert-parallel degree
     * @param seed                  training seed (data order and initialisation)
     * @param sequencesPerStep      sequences each rank consumes per step
     * @param rankSequenceCounts    packed sequences per rank: the data fingerprint checked on resume
     * @param files                 rank files in rank order
     * @param metricsJson           JSON lines of the step metrics up to {@code step}
     * @param jobKey                the stage attempt that wrote it
     */
    public record Manifest(int format, long step, int worldSize, int ep, long seed, int sequencesPerStep,
                           List<Long> rankSequenceCounts, List<FileInfo> files, List<String> metricsJson,
                           String jobKey) implements Serializable {

        /** Data position of a rank: sequences already consumed from its ordered sequence list. */
        public long sequencesConsumed() {
            return step * sequencesPerStep;
        }
    }

    /** Step 1 of a checkpoint, on every rank: writes this rank's state into the temporary directory. */
    public FileInfo writeRank(long step, String jobKey, int rank, Map<String, Tensor> state) throws IOException {
        FileSystem fs = dataFs();
        Path p = new Path(tmpPath(step, jobKey), rankFile(rank));
        CRC32 crc = new CRC32();
        try (FSDataOutputStream os = fs.create(p, true, IO_BUFFER_BYTES)) {
            CountingCheckedStream cs = new CountingCheckedStream(os, crc);
            TensorFiles.write(cs, state);
            cs.flush();
            return new FileInfo(rankFile(rank), cs.count, crc.getValue());
        }
    }

    /** Step 2, on rank 0 once every rank has written: manifest, move into place, marker, pruning. */
    public void commit(Manifest m, int keepLast) throws IOException {
        FileSystem fs = fs();
        Path tmp = tmpPath(m.step(), m.jobKey());
        byte[] manifest = JSON.writeValueAsBytes(m);
        try (FSDataOutputStream os = fs.create(new Path(tmp, "manifest.json"), true)) {
            os.write(manifest);
        }
        Path fin = stepPath(m.step());
        if (fs.exists(fin)) {
            fs.delete(fin, true); // an incomplete one from a failed attempt, or one this resumed run supersedes
        }
        if (!fs.rename(tmp, fin)) {
            throw new IOException("could not move checkpoint " + tmp + " to " + fin);
        }
        try (FSDataOutputStream os = fs.create(new Path(fin, MARKER), false)) {
            os.write(markerText(m.step(), manifest).getBytes(StandardCharsets.UTF_8));
        }
        prune(fs, keepLast, m.jobKey());
    }

    static String markerText(long step, byte[] manifest) {
        CRC32 c = new CRC32();
        c.update(manifest);
        return "committed " + stepName(step) + " manifest-crc32 " + Long.toHexString(c.getValue()) + "\n";
    }

    private void prune(FileSystem fs, int keepLast, String jobKey) throws IOException {
        List<Long> committed = new ArrayList<>();
        for (long s : stepsOnDisk(fs)) {
            if (isComplete(fs, s)) {
                committed.add(s);
            }
        }
        committed.sort(Comparator.reverseOrder());
        long newest = committed.isEmpty() ? Long.MAX_VALUE : committed.get(0);
        for (int i = keepLast; i < committed.size(); i++) {
            fs.delete(stepPath(committed.get(i)), true);
        }
        for (long s : stepsOnDisk(fs)) {
            if (s < newest && !committed.contains(s)) {
                fs.delete(stepPath(s), true); // incomplete leftovers older than a good checkpoint
            }
        }
        Path tmpRoot = new Path(dir, "_tmp");
        if (fs.exists(tmpRoot)) {
            String mine = jobKey.replaceAll("[^A-Za-z0-9_.-]", "_");
            for (FileStatus st : fs.listStatus(tmpRoot)) {
                if (!st.getPath().getName().endsWith("-" + mine)) {
                    fs.delete(st.getPath(), true); // earlier attempts have finished before this one started
                }
            }
        }
    }

    private List<Long> stepsOnDisk(FileSystem fs) throws IOException {
        List<Long> steps = new ArrayList<>();
        Path root = new Path(dir);
        if (!fs.exists(root)) {
            return steps;
        }
        for (FileStatus st : fs.listStatus(root)) {
            Matcher m = STEP_DIR.matcher(st.getPath().getName());
            if (st.isDirectory() && m.matches()) {
                steps.add(Long.parseLong(m.group(1)));
            }
        }
        return steps;
    }

    private boolean isComplete(FileSystem fs, long step) {
        return readComplete(fs, step).isPresent();
    }

    private Optional<Manifest> readComplete(FileSystem fs, long step) {
        Path p = stepPath(step);
        try {
            Path marker = new Path(p, MARKER);
            Path mf = new Path(p, "manifest.json");
            if (!fs.exists(marker) || !fs.exists(mf)) {
                return Optional.empty();
            }
            byte[] manifest = readAll(fs, mf);
            String want = markerText(step, manifest);
            if (!want.equals(new String(readAll(fs, marker), StandardCharsets.UTF_8))) {
                return Optional.empty();
            }
            Manifest m = JSON.readValue(manifest, Manifest.class);
            if (m.step() != step || m.files().size() != m.worldSize()) {
                return Optional.empty();
            }
            for (FileInfo f : m.files()) {
                Path fp = new Path(p, f.name());
                if (!fs.exists(fp) || fs.getFileStatus(fp).getLen() != f.bytes()) {
                    return Optional.empty();
                }
            }
            return Optional.of(m);
        } catch (IOException | RuntimeException e) {
            return Optional.empty();
        }
    }

    private static byte[] readAll(FileSystem fs, Path p) throws IOException {
        try (FSDataInputStream in = fs.open(p)) {
            return in.readAllBytes();
        }
    }

    /** The newest complete checkpoint; incomplete or damaged ones are skipped. */
    public Optional<Manifest> latest() throws IOException {
        FileSystem fs = fs();
        List<Long> steps = stepsOnDisk(fs);
        steps.sort(Comparator.reverseOrder());
        for (long s : steps) {
            Optional<Manifest> m = readComplete(fs, s);
            if (m.isPresent()) {
                return m;
            }
        }
        return Optional.empty();
    }

    /** Every complete checkpoint's step, oldest first. */
    public List<Long> committedSteps() throws IOException {
        FileSystem fs = fs();
        List<Long> out = new ArrayList<>();
        for (long s : stepsOnDisk(fs)) {
            if (isComplete(fs, s)) {
                out.add(s);
            }
        }
        out.sort(Comparator.naturalOrder());
        return out;
    }

    /**
     * Reads one rank's state of a committed checkpoint, checking its length and CRC against the manifest (and, where
     * the file system checks blocks itself, as HDFS does, its checksums). One pass, never the whole file in one
     * array: the tensors are parsed as the bytes stream by and returned only once the CRC matched. Damage of any kind is a {@link DamagedCheckpointException}
     * naming the file; other I/O errors (the file system unreachable) pass through as they are.
     */
    public Map<String, Tensor> readRank(Manifest m, int rank) throws IOException {
        FileInfo f = m.files().get(rank);
        Path p = new Path(stepPath(m.step()), f.name());
        CRC32 crc = new CRC32();
        Map<String, Tensor> state = null;
        Exception unreadable = null;
        long bytes;
        // one pass: the tensors are parsed as the bytes stream by, the CRC and the length are checked at the end (and
        // nothing is returned before); a file that cannot be parsed is read to its end, so that damage is reported
        // as damage (length, CRC) whatever byte it hit
        try (FSDataInputStream raw = dataFs().open(p, IO_BUFFER_BYTES)) {
            CountingCheckedInput in = new CountingCheckedInput(raw, crc);
            try {
                state = TensorFiles.read(in, p.toString(), f.bytes());
            } catch (org.apache.hadoop.fs.ChecksumException e) {
                throw e;
            } catch (IOException | RuntimeException e) {
                unreadable = e;
                in.drain();
            }
            bytes = in.count;
        } catch (org.apache.hadoop.fs.ChecksumException e) {
            throw new DamagedCheckpointException(m.step(), "checkpoint file " + p + " is damaged: Hadoop's checksum "
                    + "failed (" + firstLine(e) + ")", e);
        }
        if (bytes != f.bytes() || crc.getValue() != f.crc32()) {
            throw new DamagedCheckpointException(m.step(), "checkpoint file " + p + " is damaged: " + bytes
                    + " bytes, crc32 " + Long.toHexString(crc.getValue()) + "; the manifest says " + f.bytes()
                    + " bytes, crc32 " + Long.toHexString(f.crc32()), unreadable);
        }
        if (unreadable != null) {
            throw new DamagedCheckpointException(m.step(), "checkpoint file " + p + " is damaged: its tensors cannot "
                    + "be read (" + firstLine(unreadable) + ")", unreadable);
        }
        return state;
    }

    /**
     * Reads every rank file of {@code m} as {@link #readRank} does; empty when all are intact, else what is wrong
     * with the first damaged one.
     */
    public Optional<String> damage(Manifest m) throws IOException {
        for (int r = 0; r < m.files().size(); r++) {
            try {
                readRank(m, r);
            } catch (DamagedCheckpointException e) {
                return Optional.of(e.getMessage());
            }
        }
        return Optional.empty();
    }

    /**
     * Moves a damaged checkpoint out of the way, never deleting it: {@code step-N} becomes {@code step-N.damaged}
     * (or {@code .damaged-2}, ...), with a {@code _DAMAGED} note saying why; {@link #latest} no longer sees it.
     * Returns its new path.
     */
    public Path setAside(long step, String why) throws IOException {
        FileSystem fs = fs();
        Path from = stepPath(step);
        Path to = new Path(dir, stepName(step) + ".damaged");
        for (int i = 2; fs.exists(to); i++) {
            to = new Path(dir, stepName(step) + ".damaged-" + i);
        }
        if (!fs.rename(from, to)) {
            throw new IOException("could not set the damaged checkpoint " + from + " aside as " + to);
        }
        try (FSDataOutputStream os = fs.create(new Path(to, "_DAMAGED"), true)) {
            os.write((why + "\nSet aside by spark-moe; rename it back to " + from.getName() + " to use it again.\n")
                    .getBytes(StandardCharsets.UTF_8));
        }
        return to;
    }

    private static String firstLine(Throwable t) {
        String m = String.valueOf(t.getMessage());
        int nl = m.indexOf('\n');
        return nl < 0 ? m : m.substring(0, nl);
    }

    private static final class CountingCheckedInput extends CheckedInputStream {
        long count;

        CountingCheckedInput(InputStream in, CRC32 crc) {
            super(in, crc);
        }

        @Override
        public int read() throws IOException {
            int b = super.read();
            if (b >= 0) {
                count++;
            }
            return b;
        }

        @Override
        public int read(byte[] b, int off, int len) throws IOException {
            int n = super.read(b, off, len);
            if (n > 0) {
                count += n;
            }
            return n;
        }

        void drain() throws IOException {
            byte[] buf = new byte[1 << 16];
            while (read(buf, 0, buf.length) >= 0) {
                // the CRC and the count follow the bytes
            }
        }
    }

    private static final class CountingCheckedStream extends CheckedOutputStream {
        long count;

        CountingCheckedStream(OutputStream out, CRC32 crc) {
            super(out, crc);
        }

        @Override
        public void write(int b) throws IOException {
            super.write(b);
            count++;
        }

        @Override
        public void write(byte[] b, int off, int len) throws IOException {
            super.write(b, off, len);
            count += len;
        }
    }

    static byte[] toBytes(Map<String, Tensor> state) throws IOException {
        ByteArrayOutputStream bo = new ByteArrayOutputStream();
        TensorFiles.write(bo, state);
        return bo.toByteArray();
    }
}

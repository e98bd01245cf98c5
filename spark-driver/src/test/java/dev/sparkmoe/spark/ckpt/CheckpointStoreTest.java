package dev.sparkmoe.spark.ckpt;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Each crash point of the commit protocol leaves either the previous checkpoint or nothing loadable. */
class CheckpointStoreTest {
    @TempDir
    Path tmp;

    CheckpointStore store() {
        return new CheckpointStore(tmp.toUri().toString() + "ckpt", new Configuration());
    }

    static Map<String, Tensor> state(int rank, long step) {
        return Map.of("w", Tensor.of(new float[] {rank, step, -0.0f, Float.NaN}, 2, 2),
                "bf", Tensor.ofFloating(DType.BF16, new float[] {1.5f, 3.14159f}, 2),
                "step", Tensor.ofLongs(new long[] {step}, 1));
    }

    CheckpointStore.Manifest write(CheckpointStore s, long step, int world, boolean commit) throws IOException {
        List<CheckpointStore.FileInfo> files = new ArrayList<>();
        for (int r = 0; r < world; r++) {
            files.add(s.writeRank(step, "job-1", r, state(r, step)));
        }
        CheckpointStore.Manifest m = new CheckpointStore.Manifest(1, step, world, 1, 42, 2, List.of(10L, 10L), files,
                List.of("{\"step\":1}"), "job-1");
        if (commit) {
            s.commit(m, 2);
        }
        return m;
    }

    @Test
    void roundTripIsBitExactAndPrunesToKeepLast() throws Exception {
        CheckpointStore s = store();
        for (long step : new long[] {2, 4, 6}) {
            write(s, step, 2, true);
        }
        assertEquals(List.of(4L, 6L), s.committedSteps());
        CheckpointStore.Manifest m = s.latest().orElseThrow();
        assertEquals(6, m.step());
        assertEquals(12, m.sequencesConsumed());
        for (int r = 0; r < 2; r++) {
            Map<String, Tensor> back = s.readRank(m, r);
            state(r, 6).forEach((k, v) -> assertTrue(v.bitwiseEquals(back.get(k)), k));
        }
        assertTrue(!Files.exists(tmp.resolve("ckpt/_tmp")) || Files.list(tmp.resolve("ckpt/_tmp")).count() == 0);
    }

    @Test
    void ranksWrittenButNeverCommittedIsIgnored() throws Exception {
        CheckpointStore s = store();
        write(s, 2, 2, true);
        write(s, 4, 2, false); // crash before rank 0's commit: only the temporary directory exists
        assertEquals(2, s.latest().orElseThrow().step());
    }

    @Test
    void movedButNoMarkerOrTornMarkerIsIgnored() throws Exception {
        CheckpointStore s = store();
        write(s, 2, 2, true);
        write(s, 4, 2, true);
        Path marker = tmp.resolve("ckpt/step-00000004/_COMMITTED");
        Files.delete(marker); // crash after the move, before the marker
        assertEquals(2, s.latest().orElseThrow().step());
        Files.writeString(marker, ""); // crash while writing the marker
        assertEquals(2, s.latest().orElseThrow().step());
        Files.writeString(marker, "committed step-00000004 manifest-crc32 0\n"); // a marker for another manifest
        assertEquals(2, s.latest().orElseThrow().step());
    }

    @Test
    void truncatedOrMissingRankFileIsIgnoredAndDamageIsDetected() throws Exception {
        CheckpointStore s = store();
        write(s, 2, 2, true);
        write(s, 4, 2, true);
        Path f = tmp.resolve("ckpt/step-00000004/rank-00001.state");
        try (RandomAccessFile raf = new RandomAccessFile(f.toFile(), "rw")) {
            raf.setLength(raf.length() - 3);
        }
        assertEquals(2, s.latest().orElseThrow().step());
        // same length, flipped bits: found when the rank reads it (by our CRC, or by the file system's own checksum
        // where it keeps one, as Hadoop's local file system does)
        write(s, 6, 2, true);
        Path g = tmp.resolve("ckpt/step-00000006/rank-00000.state");
        byte[] b = Files.readAllBytes(g);
        b[b.length - 1] ^= 1;
        Files.write(g, b);
        CheckpointStore.Manifest m = s.latest().orElseThrow();
        assertEquals(6, m.step());
        IOException e = assertThrows(IOException.class, () -> s.readRank(m, 0));
        assertTrue(e.getMessage().contains("is damaged") || e.getMessage().contains("Checksum error"),
                e.getMessage());
        // without the file system's checksum file, our CRC catches it
        Files.deleteIfExists(tmp.resolve("ckpt/step-00000006/.rank-00000.state.crc"));
        IOException e2 = assertThrows(IOException.class, () -> s.readRank(m, 0));
        assertTrue(e2.getMessage().contains("is damaged") && e2.getMessage().contains("crc32"), e2.getMessage());
    }

    /** The format as its javadoc states it, written element by element: what every earlier checkpoint holds. */
    static byte[] referenceBytes(Map<String, Tensor> tensors) throws IOException {
        java.io.ByteArrayOutputStream bo = new java.io.ByteArrayOutputStream();
        java.io.DataOutputStream out = new java.io.DataOutputStream(bo);
        out.write("SMOERS01".getBytes(java.nio.charset.StandardCharsets.US_ASCII));
        Map<String, Tensor> sorted = new java.util.TreeMap<>(tensors);
        out.writeInt(sorted.size());
        for (Map.Entry<String, Tensor> e : sorted.entrySet()) {
            Tensor t = e.getValue();
            out.writeUTF(e.getKey());
            out.writeUTF(t.dtype().name());
            out.writeInt(t.shape().length);
            for (int d : t.shape()) {
                out.writeInt(d);
            }
            switch (t.dtype()) {
                case I64 -> {
                    for (long v : t.longs()) {
                        out.writeLong(v);
                    }
                }
                case I32 -> {
                    for (int v : t.ints()) {
                        out.writeInt(v);
                    }
                }
                default -> {
                    for (float v : t.floats()) {
                        out.writeInt(Float.floatToRawIntBits(v));
                    }
                }
            }
        }
        return bo.toByteArray();
    }

    /** Tensors larger than the bulk buffer, of odd lengths, with NaN payloads, -0.0 and every integer width. */
    static Map<String, Tensor> bigState() {
        java.util.SplittableRandom rnd = new java.util.SplittableRandom(3);
        float[] f = new float[3 * (TensorFiles.CHUNK_BYTES / 4) + 17];
        for (int i = 0; i < f.length; i++) {
            f[i] = (float) rnd.nextGaussian();
        }
        f[0] = Float.intBitsToFloat(0x7fc01234); // a NaN with a payload: kept bit for bit
        f[1] = Float.intBitsToFloat(0xffa00001); // a signalling NaN
        f[2] = -0.0f;
        f[f.length - 1] = Float.MIN_VALUE;
        float[] bf = new float[TensorFiles.CHUNK_BYTES / 4 + 3];
        for (int i = 0; i < bf.length; i++) {
            bf[i] = (float) rnd.nextGaussian();
        }
        int[] iv = new int[5 * (TensorFiles.CHUNK_BYTES / 4 * 2 / 5 + 1)]; // over two buffers
        for (int i = 0; i < iv.length; i++) {
            iv[i] = rnd.nextInt();
        }
        long[] lv = new long[TensorFiles.CHUNK_BYTES / 8 + 9];
        for (int i = 0; i < lv.length; i++) {
            lv[i] = rnd.nextLong();
        }
        Map<String, Tensor> m = new java.util.LinkedHashMap<>();
        m.put("param/w", Tensor.of(f, f.length));
        m.put("exp_avg/b", Tensor.ofFloating(DType.BF16, bf, bf.length));
        m.put("region/w", Tensor.ofInts(iv, 5, iv.length / 5));
        m.put("ids", Tensor.ofLongs(lv, lv.length));
        m.put("empty", Tensor.zeros(DType.F32, 0, 4));
        m.put("scalar", Tensor.of(new float[] {2.5f}));
        return m;
    }

    @Test
    void theBulkFormatIsByteForByteTheElementWiseOneAndReadsBothBitExact() throws Exception {
        Map<String, Tensor> state = bigState();
        byte[] ref = referenceBytes(state);
        java.io.ByteArrayOutputStream bo = new java.io.ByteArrayOutputStream();
        TensorFiles.write(bo, state);
        assertTrue(java.util.Arrays.equals(ref, bo.toByteArray()), "same bytes as the element-wise writer");
        Map<String, Tensor> back = TensorFiles.read(new java.io.ByteArrayInputStream(ref), "ref", ref.length);
        assertEquals(state.keySet(), back.keySet());
        state.forEach((k, v) -> assertTrue(v.bitwiseEquals(back.get(k)), k));
        assertEquals(0x7fc01234, Float.floatToRawIntBits(back.get("param/w").floats()[0]));
        assertEquals(0xffa00001, Float.floatToRawIntBits(back.get("param/w").floats()[1]));

        // through the store: written, committed, read back verified
        CheckpointStore s = store();
        CheckpointStore.FileInfo fi = s.writeRank(2, "job-1", 0, state);
        assertEquals(ref.length, fi.bytes());
        java.util.zip.CRC32 crc = new java.util.zip.CRC32();
        crc.update(ref);
        assertEquals(crc.getValue(), fi.crc32());
        CheckpointStore.Manifest m = new CheckpointStore.Manifest(1, 2, 1, 1, 42, 2, List.of(10L), List.of(fi),
                List.of(), "job-1");
        s.commit(m, 2);
        Map<String, Tensor> read = s.readRank(s.latest().orElseThrow(), 0);
        state.forEach((k, v) -> assertTrue(v.bitwiseEquals(read.get(k)), k));
    }

    @Test
    void rankFilesAreCheckedByTheManifestCrcAloneAndOlderOnesWithACrcFileStillLoad() throws Exception {
        CheckpointStore s = store();
        write(s, 2, 2, true);
        Path step = tmp.resolve("ckpt/step-00000002");
        assertTrue(Files.exists(step.resolve("rank-00000.state")));
        assertTrue(!Files.exists(step.resolve(".rank-00000.state.crc")), "one CRC per rank file: the manifest's");
        assertTrue(Files.exists(step.resolve(".manifest.json.crc")), "the other files keep Hadoop's checksums");

        // a checkpoint written before (through the checksummed file system, a .crc beside each rank file)
        org.apache.hadoop.fs.LocalFileSystem local = org.apache.hadoop.fs.FileSystem.getLocal(new Configuration());
        List<CheckpointStore.FileInfo> files = new ArrayList<>();
        for (int r = 0; r < 2; r++) {
            byte[] b = referenceBytes(state(r, 4));
            org.apache.hadoop.fs.Path p = new org.apache.hadoop.fs.Path(tmp.resolve("ckpt/_tmp/step-00000004-job-1")
                    .resolve(CheckpointStore.rankFile(r)).toUri());
            try (java.io.OutputStream os = local.create(p, true)) {
                os.write(b);
            }
            java.util.zip.CRC32 c = new java.util.zip.CRC32();
            c.update(b);
            files.add(new CheckpointStore.FileInfo(CheckpointStore.rankFile(r), b.length, c.getValue()));
        }
        s.commit(new CheckpointStore.Manifest(1, 4, 2, 1, 42, 2, List.of(10L, 10L), files, List.of(), "job-1"), 2);
        Path old = tmp.resolve("ckpt/step-00000004");
        assertTrue(Files.exists(old.resolve(".rank-00001.state.crc")));
        CheckpointStore.Manifest m = s.latest().orElseThrow();
        assertEquals(4, m.step());
        for (int r = 0; r < 2; r++) {
            Map<String, Tensor> back = s.readRank(m, r);
            state(r, 4).forEach((k, v) -> assertTrue(v.bitwiseEquals(back.get(k)), k));
        }
        // its damage is found with or without the .crc file
        Path f = old.resolve("rank-00001.state");
        byte[] b = Files.readAllBytes(f);
        b[b.length / 2] ^= 0x04;
        Files.write(f, b);
        DamagedCheckpointException e = assertThrows(DamagedCheckpointException.class, () -> s.readRank(m, 1));
        assertTrue(e.getMessage().contains("is damaged") && e.getMessage().contains("crc32"), e.getMessage());
        assertEquals(4, e.step());
    }

    @Test
    void aDamagedHeaderIsReportedAsDamageBeforeItCostsMemory() throws Exception {
        CheckpointStore s = store();
        CheckpointStore.Manifest m = write(s, 2, 1, true);
        Path f = tmp.resolve("ckpt/step-00000002/rank-00000.state");
        byte[] b = Files.readAllBytes(f);
        // "SMOERS01" | count | UTF "bf" | UTF "BF16" | rank | dim 0 at byte 26: 2 becomes 2^30 elements (4 GB)
        assertEquals(2, java.nio.ByteBuffer.wrap(b, 26, 4).getInt());
        java.nio.ByteBuffer.wrap(b, 26, 4).putInt(1 << 30);
        Files.write(f, b);
        Files.deleteIfExists(tmp.resolve("ckpt/step-00000002/.rank-00000.state.crc"));
        DamagedCheckpointException e = assertThrows(DamagedCheckpointException.class,
                () -> s.readRank(s.latest().orElseThrow(), 0));
        assertTrue(e.getMessage().contains("is damaged") && e.getMessage().contains("crc32")
                && e.getMessage().contains(Long.toHexString(m.files().get(0).crc32())), e.getMessage());
        // cut short at the same length, a tensor's bytes missing: also damage, never a short tensor
        java.nio.ByteBuffer.wrap(b, 26, 4).putInt(2);
        b[b.length - 1] ^= 0x40;
        Files.write(f, b);
        assertThrows(DamagedCheckpointException.class, () -> s.readRank(s.latest().orElseThrow(), 0));
    }
}

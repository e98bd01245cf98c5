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
}

package dev.sparkmoe.core.io;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class OutputDirTest {
    @TempDir
    Path dir;

    private List<String> names() throws Exception {
        try (Stream<Path> s = Files.list(dir)) {
            return s.map(p -> p.getFileName().toString()).sorted().toList();
        }
    }

    @Test
    void aCommittedFileReplacesItsTargetAndLeavesNoTemporaryFile() throws Exception {
        Files.write(dir.resolve("a.bin"), new byte[] {9});
        OutputDir out = OutputDir.local(dir);
        try (OutputDir.Output o = out.create("a.bin")) {
            o.stream().write(new byte[] {1, 2, 3});
            assertArrayEquals(new byte[] {9}, Files.readAllBytes(dir.resolve("a.bin")), "not visible before commit");
            o.commit();
        }
        assertArrayEquals(new byte[] {1, 2, 3}, Files.readAllBytes(dir.resolve("a.bin")));
        assertEquals(List.of("a.bin"), names());
    }

    @Test
    void aFileClosedUncommittedVanishesAndLeavesTheOldOne() throws Exception {
        Files.write(dir.resolve("a.bin"), new byte[] {9});
        OutputDir out = OutputDir.local(dir);
        try (OutputDir.Output o = out.create("a.bin")) {
            o.stream().write(new byte[] {1, 2, 3});
        }
        try (OutputDir.Output o = out.create("b.bin")) {
            o.stream().write(new byte[] {4});
        }
        assertArrayEquals(new byte[] {9}, Files.readAllBytes(dir.resolve("a.bin")));
        assertFalse(Files.exists(dir.resolve("b.bin")));
        assertEquals(List.of("a.bin"), names());
    }

    @Test
    void outputOfRunsCommitOnceAndDiscardOnlyWhenUncommitted() throws Exception {
        int[] commits = new int[1];
        int[] discards = new int[1];
        try (OutputDir.Output o = OutputDir.Output.of(java.io.OutputStream.nullOutputStream(),
                () -> commits[0]++, () -> discards[0]++)) {
            o.commit();
        }
        try (OutputDir.Output o = OutputDir.Output.of(java.io.OutputStream.nullOutputStream(),
                () -> commits[0]++, () -> discards[0]++)) {
            assertTrue(o.stream() != null);
        }
        assertEquals(1, commits[0]);
        assertEquals(1, discards[0]);
    }
}

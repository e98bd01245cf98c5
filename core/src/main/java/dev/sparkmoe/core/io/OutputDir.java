package dev.sparkmoe.core.io;

import java.io.Closeable;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.channels.Channels;
import java.nio.channels.FileChannel;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.Set;
import java.util.concurrent.ThreadLocalRandom;
import java.util.stream.Stream;

/**
 * A directory that files are written into one by one (a local directory, or a Hadoop file system directory in the
 * Spark job). A file written through {@link #create} appears under its name only once committed, never partially.
 */
public interface OutputDir {

    /** A new file called {@code name}: committed, it replaces any file of that name; closed uncommitted, it vanishes. */
    Output create(String name) throws IOException;

    /**
     * Called when a checkpoint save has committed all its files ({@code written}, the index last): a directory that
     * may hold an earlier save deletes that save's files that are not among them. The default does nothing.
     */
    default void finish(Set<String> written) throws IOException {
    }

    /** A file being written. */
    interface Output extends Closeable {
        OutputStream stream();

        /** Makes the bytes written so far durable and visible under the file's name. */
        void commit() throws IOException;

        /** Discards the file unless it was committed. */
        @Override
        void close() throws IOException;

        /**
         * An output over {@code stream} that runs {@code commit} once on {@link #commit} and, closed uncommitted,
         * {@code discard} (which closes the stream and removes what was written).
         */
        static Output of(OutputStream stream, IoAction commit, IoAction discard) {
            return new Output() {
                private boolean committed;

                @Override
                public OutputStream stream() {
                    return stream;
                }

                @Override
                public void commit() throws IOException {
                    commit.run();
                    committed = true;
                }

                @Override
                public void close() throws IOException {
                    if (!committed) {
                        discard.run();
                    }
                }
            };
        }
    }

    /** A step of committing or discarding an {@link Output}. */
    @FunctionalInterface
    interface IoAction {
        void run() throws IOException;
    }

    /**
     * A local directory (created if needed): each file is written to a temporary file beside its target, forced to
     * disk and moved over the target atomically; {@link #finish} deletes Hugging Face checkpoint files
     * ({@value HfCheckpoint#SINGLE_FILE}, {@value HfCheckpoint#INDEX_FILE}, {@code model-0000k-of-0000n.safetensors})
     * of an earlier save that the new one did not write.
     */
    static OutputDir local(Path dir) throws IOException {
        Files.createDirectories(dir);
        return new OutputDir() {
            @Override
            public Output create(String name) throws IOException {
                Path target = dir.resolve(name).toAbsolutePath();
                Path tmp = target.resolveSibling("." + target.getFileName() + "."
                        + Long.toHexString(ThreadLocalRandom.current().nextLong()) + ".tmp");
                FileChannel ch = FileChannel.open(tmp, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE);
                return Output.of(Channels.newOutputStream(ch), () -> {
                    ch.force(true);
                    ch.close();
                    try {
                        Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
                    } catch (AtomicMoveNotSupportedException e) {
                        throw new IOException("cannot write " + target + " atomically: the file system does not "
                                + "support atomic moves within " + dir, e);
                    }
                }, () -> {
                    ch.close();
                    Files.deleteIfExists(tmp);
                });
            }

            @Override
            public void finish(Set<String> written) throws IOException {
                try (Stream<Path> files = Files.list(dir)) {
                    for (Path p : (Iterable<Path>) files::iterator) {
                        String n = p.getFileName().toString();
                        boolean ours = n.equals(HfCheckpoint.SINGLE_FILE) || n.equals(HfCheckpoint.INDEX_FILE)
                                || HfCheckpoint.SHARD_NAME.matcher(n).matches();
                        if (ours && !written.contains(n)) {
                            Files.delete(p);
                        }
                    }
                }
            }
        };
    }
}

package dev.sparkmoe.gpu.bundle;

import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/**
 * The bench source set (src/bench/java, package dev.sparkmoe.gpu.bench) is compiled with the main classes but shipped
 * in a jar of its own, which the Spark job jar does not take: so no main class may name one of its classes. Checked
 * on the compiled classes (a class's constant pool names every class it uses).
 */
class BenchSeparationTest {
    static final String BENCH = "dev/sparkmoe/gpu/bench/";

    @Test
    void noMainClassUsesTheBenchSourceSet() throws IOException {
        Path classes = Path.of("target", "classes");
        assertTrue(Files.isDirectory(classes.resolve(BENCH)), "no compiled bench classes under "
                + classes.toAbsolutePath() + "; the bench source set is missing from the build");
        List<String> offenders;
        try (Stream<Path> all = Files.walk(classes)) {
            offenders = all.filter(p -> p.toString().endsWith(".class"))
                    .filter(p -> !classes.relativize(p).toString().replace('\\', '/').startsWith(BENCH))
                    .filter(p -> {
                        try {
                            return new String(Files.readAllBytes(p), StandardCharsets.ISO_8859_1).contains(BENCH);
                        } catch (IOException e) {
                            throw new java.io.UncheckedIOException(e);
                        }
                    })
                    .map(p -> classes.relativize(p).toString())
                    .collect(Collectors.toList());
        }
        assertTrue(offenders.isEmpty(), "main classes that use the bench source set (move what they need into "
                + "src/main, or them into src/bench): " + offenders);
    }
}

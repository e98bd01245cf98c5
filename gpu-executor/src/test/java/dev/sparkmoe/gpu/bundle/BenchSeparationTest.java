package dev.sparkmoe.gpu.bundle;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.jar.JarFile;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/**
 * The bench source set (src/bench/java) is compiled with the main classes but shipped in a jar of its own, which the
 * Spark job jar does not take: no main class may use one of its classes, and the main jar, where it has been
 * packaged, holds none of them. Checked on the compiled classes (a class's constant pool names every class it uses).
 */
class BenchSeparationTest {

    /** Internal names (dev/sparkmoe/...) of the bench source set's top-level classes. */
    private static List<String> benchClasses() throws IOException {
        Path root = Path.of("src", "bench", "java");
        try (Stream<Path> all = Files.walk(root)) {
            return all.filter(p -> p.toString().endsWith(".java"))
                    .map(p -> root.relativize(p).toString().replace('\\', '/').replaceAll("\\.java$", ""))
                    .collect(Collectors.toList());
        }
    }

    private static boolean isBench(String classFile, List<String> bench) {
        String name = classFile.replace('\\', '/').replaceAll("\\.class$", "");
        return bench.stream().anyMatch(b -> name.equals(b) || name.startsWith(b + "$"));
    }

    @Test
    void noMainClassUsesTheBenchSourceSet() throws IOException {
        List<String> bench = benchClasses();
        assertFalse(bench.isEmpty(), "no sources under src/bench/java");
        Path classes = Path.of("target", "classes");
        for (String b : bench) {
            assertTrue(Files.isRegularFile(classes.resolve(b + ".class")), b + " is not compiled into " + classes
                    + "; the bench source set is missing from the build");
        }
        List<String> offenders = new ArrayList<>();
        try (Stream<Path> all = Files.walk(classes)) {
            for (Path p : (Iterable<Path>) all.filter(x -> x.toString().endsWith(".class"))::iterator) {
                String rel = classes.relativize(p).toString();
                if (isBench(rel, bench)) {
                    continue;
                }
                String bytes;
                try {
                    bytes = new String(Files.readAllBytes(p), StandardCharsets.ISO_8859_1);
                } catch (IOException e) {
                    throw new UncheckedIOException(e);
                }
                for (String b : bench) { // the name, not a prefix of a longer one
                    if (Pattern.compile(Pattern.quote(b) + "(?![A-Za-z0-9_])").matcher(bytes).find()) {
                        offenders.add(rel + " uses " + b);
                    }
                }
            }
        }
        assertTrue(offenders.isEmpty(), "main classes that use the bench source set (move what they need into "
                + "src/main, or them into src/bench): " + offenders);
    }

    /** Where the main jar has been packaged (mvn package), the bench classes are not in it. */
    @Test
    void theMainJarLeavesTheBenchClassesOut() throws IOException {
        List<String> bench = benchClasses();
        Path target = Path.of("target");
        List<Path> jars;
        try (Stream<Path> all = Files.list(target)) {
            jars = all.filter(p -> p.getFileName().toString().matches("spark-moe-gpu-executor-.*\\.jar")
                    && !p.getFileName().toString().endsWith("-bench.jar")
                    && !p.getFileName().toString().endsWith("-tests.jar")).collect(Collectors.toList());
        }
        for (Path jar : jars) {
            try (JarFile j = new JarFile(jar.toFile())) {
                List<String> inside = j.stream().map(e -> e.getName()).filter(n -> n.endsWith(".class"))
                        .filter(n -> isBench(n, bench)).collect(Collectors.toList());
                assertTrue(inside.isEmpty(), jar + " holds bench classes " + inside);
            }
        }
    }
}

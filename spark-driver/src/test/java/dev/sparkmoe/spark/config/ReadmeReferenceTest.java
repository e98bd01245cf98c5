package dev.sparkmoe.spark.config;

import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/** The README's configuration reference is ConfigKey's table; UPDATE_README=1 rewrites it. */
class ReadmeReferenceTest {
    static final String HEADING = "## Configuration reference";

    @Test
    void readmeReferenceMatchesTheKeyTable() throws Exception {
        Path readme = Path.of("..", "README.md"); // the repository README, read from the module directory
        String text = Files.readString(readme, StandardCharsets.UTF_8);
        int at = text.indexOf("| key | type |", text.indexOf(HEADING));
        String table = ConfigKey.markdownTable();
        if ("1".equals(System.getenv("UPDATE_README"))) {
            String head = at < 0 ? text : text.substring(0, at);
            Files.writeString(readme, head + table, StandardCharsets.UTF_8);
            return;
        }
        assertTrue(at >= 0 && text.substring(at).equals(table), "README.md's configuration reference is stale: run "
                + "UPDATE_README=1 mvn -pl spark-driver -am test -Dtest=ReadmeReferenceTest");
    }
}

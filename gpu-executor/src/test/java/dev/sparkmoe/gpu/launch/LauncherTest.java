package dev.sparkmoe.gpu.launch;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.gpu.comm.JobSecret;
import dev.sparkmoe.parallel.tools.Cli;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** The launcher on CPU: real child JVMs over the TCP world. */
class LauncherTest {

    private record Result(int code, String out, String err, long millis) {
    }

    private static Result launch(String... args) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        long t0 = System.nanoTime();
        int code;
        try (PrintStream o = new PrintStream(out, true, StandardCharsets.UTF_8);
             PrintStream e = new PrintStream(err, true, StandardCharsets.UTF_8)) {
            code = Launcher.run(args, o, e);
        }
        return new Result(code, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8),
                (System.nanoTime() - t0) / 1_000_000);
    }

    @Test
    void fourRanksRunTheSmokeEntryOnTheTcpWorld() {
        Result r = launch("launch", "--nproc", "4", "--backend", "cpu", "--jvm-opt", "-Xmx256m", "--", "--skip-busbw");
        assertEquals(0, r.code(), () -> "launcher failed\nstdout:\n" + r.out() + "\nstderr:\n" + r.err());
        for (int rank = 0; rank < 4; rank++) {
            assertTrue(r.out().contains("[rank " + rank + "] rank " + rank + "/4: host conformance passed"), r.out());
            assertTrue(r.out().contains("[rank " + rank + "] rank " + rank + "/4: SMOKE OK"), r.out());
            assertTrue(r.err().contains("[rank " + rank + "] [spark-moe] rank " + rank + "/4: backend=cpu (set explicitly)"),
                    r.err());
        }
        assertFalse(r.out().contains("NCCL conformance"), "no NCCL world on the cpu backend");
        assertTrue(r.err().contains("all 4 ranks exited with code 0"), r.err());
    }

    @Test
    void aFailingRankStopsTheOthersAndIsNamed() {
        Result r = launch("--nproc", "3", "--backend", "cpu", "--grace-seconds", "3", "--jvm-opt", "-Xmx128m",
                "--entry", ExitEntry.class.getName(), "--", "--fail-rank", "1", "--code", "7");
        assertEquals(7, r.code(), () -> "stdout:\n" + r.out() + "\nstderr:\n" + r.err());
        assertTrue(r.err().contains("rank 1 exited with code 7; stopping ranks [0, 2]"), r.err());
        assertTrue(r.err().contains("FAILED: rank 1 exited with code 7"), r.err());
        assertTrue(r.out().contains("[rank 1] rank 1/3: failing on purpose with code 7"), r.out());
        // the others sleep for 120 s: only the fail-fast can have ended them this early
        assertTrue(r.millis() < 60_000, "took " + r.millis() + " ms");
    }

    @Test
    void aMissingEntryClassFailsEveryRankClearly() {
        Result r = launch("--nproc", "2", "--backend", "cpu", "--jvm-opt", "-Xmx128m", "--entry", "no.such.Entry");
        assertNotEquals(0, r.code());
        assertTrue(r.err().contains("entry class no.such.Entry is not on the class path"), r.err());
    }

    @Test
    void argumentErrorsAreClear() {
        assertUsage("--nproc is required", "--", "--steps", "3");
        assertUsage("--nproc must be >= 1, got 0", "--nproc", "0");
        assertUsage("Invalid value for option '--nproc': 'two' is not an int", "--nproc", "two");
        assertUsage("Missing required parameter for option '--nproc' (N)", "--nproc");
        assertEquals(3, Launcher.parse(new String[] {"--nproc_per_node", "3"}).nproc(), "torchrun's spelling");
        assertUsage("Unknown option: '--steps'", "--nproc", "2", "--steps", "3");
        assertUsage("Invalid value for option '--backend': expected one of [auto, cpu, cuda] (case-insensitive) but "
                + "was 'tpu'", "--nproc", "2", "--backend", "tpu");
        assertUsage("--devices lists 1 devices [3] but --nproc is 2", "--nproc", "2", "--devices", "3");
        assertUsage("--master-port must be in [1, 65535], got 70000", "--nproc", "2", "--master-port", "70000");
    }

    @Test
    void helpIsPrintedAndExitsZero() {
        Result r = launch("--help");
        assertEquals(0, r.code(), r.err());
        assertTrue(r.out().contains("Usage: launch") && r.out().contains("--nproc=N"), r.out());
    }

    private static void assertUsage(String message, String... args) {
        Cli.UsageException e = assertThrows(Cli.UsageException.class, () -> Launcher.parse(args));
        assertTrue(e.getMessage().startsWith(message), e.getMessage());
        Result r = launch(args);
        assertEquals(2, r.code());
        String[] lines = r.err().strip().split("\n");
        String last = lines[lines.length - 1];
        assertTrue(last.startsWith("error: " + message), r.err());
        assertTrue(r.err().startsWith("Usage: launch"), r.err());
    }

    @Test
    void parsingKeepsTrainingArgumentsAfterTheSeparator() {
        Launcher.Options o = Launcher.parse(new String[] {"launch", "--nproc=2", "--master-port", "29500", "--devices",
            "2,3", "--", "--nproc", "9", "config.yaml"});
        // the first argument that is not an option starts the ranks' arguments too, as with torchrun
        assertEquals(List.of("train.yaml", "--steps", "3"),
                Launcher.parse(new String[] {"--nproc", "2", "train.yaml", "--steps", "3"}).trainingArgs());
        assertEquals(2, o.nproc());
        assertEquals(29500, o.masterPort());
        assertEquals(List.of("--nproc", "9", "config.yaml"), o.trainingArgs());
        Map<String, String> env = Launcher.childEnvironment(o, 1, 29500, Path.of("/tmp/s"));
        assertEquals("3", env.get(RankMain.ENV_DEVICE));
        assertEquals("1", env.get("SPARK_MOE_RANK"));
        assertEquals("2", env.get("SPARK_MOE_WORLD_SIZE"));
        assertEquals("127.0.0.1:29500", env.get("SPARK_MOE_MASTER_ADDR"));
        assertEquals("0", env.get("NCCL_NVLS_ENABLE"));
        assertEquals("/tmp/s", env.get(JobSecret.ENV_FILE));
        assertFalse(env.containsKey(JobSecret.ENV), "the secret travels in a 0600 file, not the environment text");
    }

    @Test
    void theCommandLineCarriesNoSecretAndNoRankData() {
        Launcher.Options o = Launcher.parse(new String[] {"--nproc", "2", "--", "--lr", "3e-4"});
        List<String> cmd = Launcher.childCommand(o);
        assertEquals(RankMain.class.getName(), cmd.get(cmd.size() - 3));
        assertEquals(List.of("--lr", "3e-4"), cmd.subList(cmd.size() - 2, cmd.size()));
        assertTrue(cmd.contains("-Dorg.bytedeco.javacpp.pathsFirst=true"), cmd.toString());
        for (String a : cmd) {
            assertFalse(a.contains("SECRET") || a.contains("SPARK_MOE_RANK"), a);
        }
    }

    @Test
    void ranksInheritTheLaunchersSparkMoeSettings() {
        System.setProperty("sparkmoe.cuda.defines", "GB_STAGES=2");
        try {
            List<String> cmd = Launcher.childCommand(Launcher.parse(new String[] {"--nproc", "2"}));
            assertTrue(cmd.contains("-Dsparkmoe.cuda.defines=GB_STAGES=2"), cmd.toString());
        } finally {
            System.clearProperty("sparkmoe.cuda.defines");
        }
    }
}

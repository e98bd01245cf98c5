package dev.sparkmoe.gpu.bundle;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** bin/spark-moe-gpu's library discovery, run with an empty environment and fake library folders (CPU only). */
class BundleScriptTest {

    private static final Path SCRIPT = Path.of("src/bundle/bin/spark-moe-gpu").toAbsolutePath();

    @TempDir
    Path tmp;

    private record Run(int code, String out, String err) {
    }

    /** Runs the script under {@code env -i} with only PATH, HOME and {@code vars}. */
    private Run script(Map<String, String> vars, String... args) throws Exception {
        List<String> cmd = new ArrayList<>(List.of("env", "-i", "PATH=/usr/bin:/bin", "HOME=" + tmp));
        vars.forEach((k, v) -> cmd.add(k + "=" + v));
        cmd.add("bash");
        cmd.add(SCRIPT.toString());
        cmd.addAll(List.of(args));
        Process p = new ProcessBuilder(cmd).redirectOutput(tmp.resolve("out").toFile())
                .redirectError(tmp.resolve("err").toFile()).start();
        assertTrue(p.waitFor(60, TimeUnit.SECONDS), "script hung");
        return new Run(p.exitValue(), Files.readString(tmp.resolve("out"), StandardCharsets.UTF_8),
                Files.readString(tmp.resolve("err"), StandardCharsets.UTF_8));
    }

    private Path fakeLibs(String dir, String... libs) throws IOException {
        Path d = tmp.resolve(dir);
        Files.createDirectories(d);
        for (String l : libs) {
            Files.writeString(d.resolve(l), "");
        }
        return d;
    }

    @Test
    void aMissingNcclIsNamedWithAHint() throws Exception {
        Path cuda = tmp.resolve("cuda");
        fakeLibs("cuda/lib64", "libcudart.so.13", "libcublas.so.13", "libnvrtc.so.13");
        Run r = script(Map.of("CUDA_HOME", cuda.toString(), "SPARK_MOE_NO_SYSTEM_LIBS", "1"), "check-libs");
        assertEquals(3, r.code(), r.err());
        assertTrue(r.err().contains("missing library libnccl.so.2 (NCCL 2: pip install nvidia-nccl-cu13"), r.err());
        assertFalse(r.err().contains("missing library libcudart"), r.err());
        assertTrue(r.err().contains("libcudart.so.13 in " + cuda.resolve("lib64")), r.err());
        assertTrue(r.err().contains("searched: " + cuda.resolve("lib64")), r.err());
    }

    @Test
    void nothingFoundNamesAllFourLibraries() throws Exception {
        Run r = script(Map.of("SPARK_MOE_NO_SYSTEM_LIBS", "1"), "check-libs");
        assertEquals(3, r.code(), r.err());
        for (String lib : List.of("libcudart.so.13", "libcublas.so.13", "libnvrtc.so.13", "libnccl.so.2")) {
            assertTrue(r.err().contains("missing library " + lib + " ("), r.err());
        }
        assertTrue(r.err().contains("no candidate directory exists"), r.err());
    }

    @Test
    void launchRefusesToStartWithoutTheLibraries() throws Exception {
        Run r = script(Map.of("SPARK_MOE_NO_SYSTEM_LIBS", "1"), "launch", "--nproc", "2");
        assertEquals(3, r.code(), r.err());
        assertTrue(r.err().contains("missing library libnccl.so.2"), r.err());
    }

    @Test
    void librariesAreFoundAcrossCudaHomeNcclHomeAndPythonSitePackages() throws Exception {
        Path cuda = tmp.resolve("cuda");
        fakeLibs("cuda/targets/x86_64-linux/lib", "libcudart.so.13", "libcublas.so.13");
        Path site = tmp.resolve("site-packages");
        fakeLibs("site-packages/nvidia/cuda_nvrtc/lib", "libnvrtc.so.13");
        fakeLibs("site-packages/nvidia/nccl/lib", "libnccl.so.2");
        Path py = tmp.resolve("fake-python");
        Files.writeString(py, "#!/bin/sh\necho " + site + "\n");
        Files.setPosixFilePermissions(py, PosixFilePermissions.fromString("rwx------"));
        Run r = script(Map.of("CUDA_HOME", cuda.toString(), "SPARK_MOE_PYTHON", py.toString()), "check-libs");
        assertEquals(0, r.code(), r.err());
        assertTrue(r.err().contains("libcudart.so.13 in " + cuda.resolve("targets/x86_64-linux/lib")), r.err());
        assertTrue(r.err().contains("libnvrtc.so.13 in " + site.resolve("nvidia/cuda_nvrtc/lib")), r.err());
        assertTrue(r.err().contains("libnccl.so.2 in " + site.resolve("nvidia/nccl/lib")), r.err());
        assertTrue(r.out().contains("all CUDA/NCCL libraries found"), r.out());
    }

    @Test
    void unknownCommandsAreRejected() throws Exception {
        Run r = script(Map.of(), "train");
        assertEquals(2, r.code());
        assertTrue(r.err().contains("unknown command 'train' (launch, run, check-libs)"), r.err());
    }
}

package dev.sparkmoe.gpu.cuda;

import org.bytedeco.cuda.cudart.CUfunc_st;
import org.bytedeco.cuda.cudart.CUmod_st;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.cuda.global.nvrtc;
import org.bytedeco.cuda.nvrtc._nvrtcProgram;
import org.bytedeco.javacpp.BytePointer;
import org.bytedeco.javacpp.PointerPointer;
import org.bytedeco.javacpp.SizeTPointer;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.logging.Logger;

/**
 * Loads the {@code .cu} resources of this package, compiles them with NVRTC for the device's architecture
 * ({@code --gpu-architecture=sm_XY} from cudaGetDeviceProperties), loads the cubin with cuModuleLoadData and hands
 * out kernel functions (cuModuleGetFunction). Compiled cubins are cached per process (by source hash, options and
 * architecture) and on disk under {@code sparkmoe.cuda.cacheDir} (default {@code java.io.tmpdir/spark-moe-cubin};
 * {@code -Dsparkmoe.cuda.cacheDir=} (empty) turns the disk cache off). A compile error throws with NVRTC's log.
 *
 * <p>The include path is {@code $CUDA_HOME/include} (else {@code /usr/local/cuda/include}):
 * {@code grouped_gemm_bf16.cu} and {@code grouped_gemm_sm90.cu} include {@code cuda_bf16.h} from it; the other kernels
 * need no system header. The package's own headers ({@link #HEADERS}: the grouped GEMMs' shared parameter struct, and
 * {@code kernels_common.cuh}, the reductions and helpers of the f32 kernel files) go to NVRTC as in-memory headers
 * with every program, their text part of the cache key.
 *
 * <p>A file whose name ends in {@code _sm90.cu} uses sm_90a's architecture-specific instructions (wgmma): on a
 * compute capability 9.0 device it is compiled for {@code sm_90a} ({@link #arch(String)}) with
 * {@code -DSPARKMOE_SM90A}, whose cubin loads only there; its callers launch it on nothing else.
 */
final class KernelLibrary {
    private static final Logger LOG = Logger.getLogger(KernelLibrary.class.getName());
    private static final Map<String, byte[]> PROCESS_CACHE = new ConcurrentHashMap<>();
    /** The package's {@code .cuh} resources that kernel files may {@code #include "name"}. */
    static final List<String> HEADERS = List.of("grouped_gemm_params.cuh", "kernels_common.cuh");

    private final int smMajor;
    private final int smMinor;
    private final Map<String, CUmod_st> modules = new HashMap<>();
    private final Map<String, CUfunc_st> functions = new HashMap<>();

    KernelLibrary(int smMajor, int smMinor) {
        this.smMajor = smMajor;
        this.smMinor = smMinor;
    }

    String arch() {
        return "sm_" + smMajor + smMinor;
    }

    /**
     * The target {@code file} is compiled for: {@link #arch()}, or {@code sm_90a} for a {@code *_sm90.cu} file on a
     * compute capability 9.0 device (wgmma and the other sm_90a instructions exist only there).
     */
    String arch(String file) {
        return file.endsWith("_sm90.cu") && smMajor == 9 && smMinor == 0 ? "sm_90a" : arch();
    }

    /** The compute capability's major number (8 for sm_80 and sm_86, 9 for sm_90). */
    int smMajor() {
        return smMajor;
    }

    /** The kernel {@code name} of resource {@code file} (e.g. "elementwise.cu"), compiling and loading it on first use. */
    synchronized CUfunc_st function(String file, String name) {
        String key = file + "#" + name;
        CUfunc_st f = functions.get(key);
        if (f != null) {
            return f;
        }
        CUmod_st mod = modules.get(file);
        if (mod == null) {
            byte[] cubin = cubin(file);
            mod = new CUmod_st();
            BytePointer image = new BytePointer(cubin.length);
            image.put(cubin);
            Cuda.checkDriver(cudart.cuModuleLoadData(mod, image), "cuModuleLoadData(" + file + ", " + arch(file) + ")");
            image.close();
            modules.put(file, mod);
        }
        f = new CUfunc_st();
        Cuda.checkDriver(cudart.cuModuleGetFunction(f, mod, name), "cuModuleGetFunction(" + file + ", " + name + ")");
        functions.put(key, f);
        return f;
    }

    private static String includePath() {
        String home = System.getenv("CUDA_HOME");
        if (home == null || home.isEmpty()) {
            home = System.getenv("CUDA_PATH");
        }
        return (home == null || home.isEmpty() ? "/usr/local/cuda" : home) + "/include";
    }

    /**
     * Kernel tuning macros from {@code -Dsparkmoe.cuda.defines=NAME=VALUE,...} (e.g. {@code GB_STAGES=2}) as
     * NVRTC {@code -D} options; they take part in the cache key.
     */
    /**
     * The integer value of tuning macro {@code name} in {@code -Dsparkmoe.cuda.defines}, or {@code dflt} where it is
     * not set (for host code that must mirror a kernel's tile or shared-memory choice).
     */
    static int defineValue(String name, int dflt) {
        for (String d : defines(System.getProperty("sparkmoe.cuda.defines", ""))) {
            if (d.startsWith("-D" + name + "=")) {
                return Integer.parseInt(d.substring(name.length() + 3));
            }
        }
        return dflt;
    }

    static java.util.List<String> defines(String spec) {
        java.util.List<String> out = new java.util.ArrayList<>();
        for (String d : spec.split(",")) {
            String t = d.trim();
            if (t.isEmpty()) {
                continue;
            }
            if (!t.matches("[A-Za-z_][A-Za-z0-9_]*(=[A-Za-z0-9_.+-]*)?")) {
                throw new IllegalArgumentException("sparkmoe.cuda.defines: '" + t + "' is not NAME or NAME=VALUE "
                        + "(letters, digits, underscores); example: -Dsparkmoe.cuda.defines=GB_STAGES=2");
            }
            out.add("-D" + t);
        }
        return out;
    }

    private byte[] cubin(String file) {
        String source = readResource(file);
        String[] headers = HEADERS.stream().map(KernelLibrary::readResource).toArray(String[]::new);
        java.util.List<String> opts = new java.util.ArrayList<>(java.util.List.of("--gpu-architecture=" + arch(file),
                "--include-path=" + includePath(), "--std=c++17", "-default-device", "-lineinfo"));
        if (arch(file).equals("sm_90a")) {
            opts.add("-DSPARKMOE_SM90A"); // the file's wgmma code is enabled by it (or by __CUDA_ARCH_FEAT_SM90_ALL)
        }
        opts.addAll(defines(System.getProperty("sparkmoe.cuda.defines", "")));
        String[] options = opts.toArray(new String[0]);
        String key = sha256(source + "\n" + String.join("\n", headers) + "\n" + String.join(" ", options) + "\n"
                + nvrtcVersion());
        byte[] cached = PROCESS_CACHE.get(key);
        if (cached != null) {
            return cached;
        }
        Path disk = diskPath(file, key);
        if (disk != null && Files.isRegularFile(disk)) {
            try {
                cached = Files.readAllBytes(disk);
                PROCESS_CACHE.put(key, cached);
                return cached;
            } catch (IOException e) {
                LOG.warning("cannot read cached cubin " + disk + ": " + e + "; compiling again");
            }
        }
        long t0 = System.nanoTime();
        byte[] bin = compile(file, source, headers, options);
        LOG.info(String.format("NVRTC compiled %s for %s in %.0f ms (%d bytes of cubin)", file, arch(file),
                (System.nanoTime() - t0) / 1e6, bin.length));
        PROCESS_CACHE.put(key, bin);
        if (disk != null) {
            try {
                Files.createDirectories(disk.getParent());
                Path tmp = Files.createTempFile(disk.getParent(), "cubin", ".tmp");
                Files.write(tmp, bin);
                Files.move(tmp, disk, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            } catch (IOException e) {
                LOG.warning("cannot write cubin cache " + disk + ": " + e);
            }
        }
        return bin;
    }

    private Path diskPath(String file, String key) {
        String dir = System.getProperty("sparkmoe.cuda.cacheDir",
                Paths.get(System.getProperty("java.io.tmpdir"), "spark-moe-cubin").toString());
        if (dir.isEmpty()) {
            return null;
        }
        return Paths.get(dir, file.replace('.', '_') + "-" + arch(file) + "-" + key.substring(0, 24) + ".cubin");
    }

    /** Compiles {@code source} with {@code headers} (the texts of {@link #HEADERS}, in that order) to a cubin. */
    static byte[] compile(String file, String source, String[] headers, String[] options) {
        _nvrtcProgram prog = new _nvrtcProgram();
        Cuda.checkNvrtc(nvrtc.nvrtcCreateProgram(prog, new BytePointer(source), new BytePointer(file), headers.length,
                new PointerPointer<>(headers), new PointerPointer<>(HEADERS.toArray(new String[0]))),
                "nvrtcCreateProgram(" + file + ", headers " + HEADERS + ")");
        try {
            PointerPointer<BytePointer> opts = new PointerPointer<>(options);
            int st = nvrtc.nvrtcCompileProgram(prog, options.length, opts);
            String log = programLog(prog);
            if (st != nvrtc.NVRTC_SUCCESS) {
                String decoded;
                BytePointer p = nvrtc.nvrtcGetErrorString(st);
                decoded = p == null ? "?" : p.getString();
                throw new CudaException("nvrtc", "nvrtcCompileProgram(" + file + ", " + String.join(" ", options) + ")",
                        st, decoded, "compiler log:\n" + log);
            }
            if (!log.isBlank()) {
                LOG.warning("NVRTC log for " + file + ":\n" + log);
            }
            SizeTPointer size = new SizeTPointer(1);
            Cuda.checkNvrtc(nvrtc.nvrtcGetCUBINSize(prog, size), "nvrtcGetCUBINSize(" + file + ")");
            byte[] bin = new byte[(int) size.get()];
            Cuda.checkNvrtc(nvrtc.nvrtcGetCUBIN(prog, bin), "nvrtcGetCUBIN(" + file + ")");
            return bin;
        } finally {
            nvrtc.nvrtcDestroyProgram(prog);
        }
    }

    private static String programLog(_nvrtcProgram prog) {
        SizeTPointer size = new SizeTPointer(1);
        Cuda.checkNvrtc(nvrtc.nvrtcGetProgramLogSize(prog, size), "nvrtcGetProgramLogSize");
        if (size.get() <= 1) {
            return "";
        }
        byte[] log = new byte[(int) size.get()];
        Cuda.checkNvrtc(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog");
        return new String(log, 0, log.length - 1, StandardCharsets.UTF_8);
    }

    static String nvrtcVersion() {
        int[] major = new int[1];
        int[] minor = new int[1];
        Cuda.checkNvrtc(nvrtc.nvrtcVersion(major, minor), "nvrtcVersion");
        return major[0] + "." + minor[0];
    }

    static String readResource(String file) {
        try (InputStream in = KernelLibrary.class.getResourceAsStream(file)) {
            if (in == null) {
                throw new IllegalStateException("kernel source " + file + " is missing from the classpath (package "
                        + KernelLibrary.class.getPackageName() + ")");
            }
            return new String(in.readAllBytes(), StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new IllegalStateException("cannot read kernel source " + file, e);
        }
    }

    private static String sha256(String s) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(s.getBytes(StandardCharsets.UTF_8)));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}

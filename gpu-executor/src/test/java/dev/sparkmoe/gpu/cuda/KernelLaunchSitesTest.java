package dev.sparkmoe.gpu.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.lang.reflect.Field;
import java.lang.reflect.Modifier;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/**
 * The kernel files and the Java parts that launch them agree (no GPU needed): every kernel name a launch site of
 * {@code dev.sparkmoe.gpu.cuda} asks of a file constant of {@link KernelLauncher} is an {@code extern "C" __global__}
 * of exactly that file, and every kernel of every file is launched from somewhere. A kernel moved to another file, a
 * renamed kernel, a launch through the wrong file constant or a dead kernel fails here, not on the GPU host.
 *
 * <p>The launch sites are read from the Java sources: every call whose first argument is a file constant (directly,
 * through a {@code static final String} alias of one, or through a local {@code String} variable set from them) and
 * whose second is the kernel name: string literals joined by {@code +}, {@code cond ? a : b} choices (a condition
 * that appears in both the file and the name, as GroupedGemm's {@code sm90}, takes the same value in both) and
 * run-time parts ({@code "fa_fwd_d" + D}), which match any identifier characters. The kernels are read from the
 * {@code .cu} sources, with the function-like macros that define kernels expanded.
 */
class KernelLaunchSitesTest {
    private static final Path JAVA = sources("src/main/java/dev/sparkmoe/gpu/cuda");
    private static final Path CUDA = sources("src/main/resources/dev/sparkmoe/gpu/cuda");

    /** The module's folder {@code rel}: from gpu-executor (Maven) or from the repository root (the GPU host's runs). */
    private static Path sources(String rel) {
        Path inModule = Paths.get(rel);
        return Files.isDirectory(inModule) ? inModule : Paths.get("gpu-executor").resolve(rel);
    }

    /** Kernels that no launch site of the package asks for, each with the reason it is kept. None today. */
    static final Map<String, String> NOT_LAUNCHED = Map.of();

    @Test
    void everyLaunchedKernelIsInItsFileAndEveryKernelIsLaunched() throws IOException {
        List<String> problems = check(kernelFiles(), javaSources());
        assertTrue(problems.isEmpty(), String.join("\n", problems));
    }

    /** The guard itself: a kernel moved to another file, or a name nobody defines, is reported. */
    @Test
    void aKernelMovedToAnotherFileIsReported() throws IOException {
        Map<String, String> cu = kernelFiles();
        String adamw = cu.get(KernelLauncher.ADAMW);
        int start = adamw.indexOf("__global__ void adamw_f32(");
        int end = adamw.indexOf("\n}\n", start) + 3;
        String kernel = adamw.substring(start, end);
        cu.put(KernelLauncher.ADAMW, adamw.substring(0, start) + adamw.substring(end));
        String elementwise = cu.get(KernelLauncher.ELEMENTWISE);
        int close = elementwise.lastIndexOf("}  // extern \"C\"");
        cu.put(KernelLauncher.ELEMENTWISE, elementwise.substring(0, close) + kernel + elementwise.substring(close));
        List<String> problems = check(cu, javaSources());
        assertEquals(2, problems.size(), String.join("\n", problems));
        assertTrue(problems.get(0).contains("AdamWKernel.java") && problems.get(0).contains("adamw_f32")
                && problems.get(0).contains("elementwise.cu"), problems.get(0));
        assertTrue(problems.get(1).startsWith("elementwise.cu: kernel adamw_f32 is launched by no"), problems.get(1));

        Map<String, String> java = javaSources();
        java.put("AdamWKernel.java", java.get("AdamWKernel.java").replace("\"adamw_f32x4\"", "\"adamw_f32x8\""));
        problems = check(kernelFiles(), java);
        assertTrue(problems.stream().anyMatch(p -> p.contains("adamw_f32x8") && p.contains("no file defines it")),
                String.join("\n", problems));
    }

    @Test
    void kernelsAreFoundThroughMacrosAndOutsideExternCReported() {
        String src = "#define TWO(S, N) \\\n    __global__ void k##S##_n##N(int x) { } \\\n"
                + "    __global__ void __launch_bounds__(32 * N, 1) j##S##_n##N(int x) { }\n"
                + "__global__ void mangled(int x) { }\n"
                + "extern \"C\" {\n// __global__ void commented(int x)\nTWO(, 4)\nTWO(w8, 2)\n}\n"
                + "extern \"C\" __global__ void single(int x) { }\n";
        Map<String, Boolean> k = kernels(src);
        assertEquals(Map.of("k_n4", true, "j_n4", true, "kw8_n2", true, "jw8_n2", true, "mangled", false,
                "single", true), k);
    }

    // ------------------------------------------------------------------------------------------------ the check

    /**
     * The problems found with the kernel files {@code cu} (file name to text) and the Java sources {@code java} of
     * the package (file name to text): one line each, naming the file, the kernel and what to do.
     */
    static List<String> check(Map<String, String> cu, Map<String, String> java) {
        List<String> problems = new ArrayList<>();
        Map<String, String> constants = fileConstants();
        for (String file : cu.keySet()) {
            if (!constants.containsValue(file)) {
                problems.add(file + " is a kernel file of the package but no KernelLauncher constant names it: add one");
            }
        }
        for (Map.Entry<String, String> c : constants.entrySet()) {
            if (!cu.containsKey(c.getValue())) {
                problems.add("KernelLauncher." + c.getKey() + " names " + c.getValue() + ", which is not in " + CUDA);
            }
        }
        Map<String, Map<String, Boolean>> kernelsOf = new TreeMap<>();
        Map<String, String> fileOf = new HashMap<>();
        for (Map.Entry<String, String> e : cu.entrySet()) {
            Map<String, Boolean> ks = kernels(e.getValue());
            kernelsOf.put(e.getKey(), ks);
            for (Map.Entry<String, Boolean> k : ks.entrySet()) {
                if (!k.getValue()) {
                    problems.add(e.getKey() + ": __global__ " + k.getKey() + " is outside every extern \"C\" block, so "
                            + "its name is mangled and cuModuleGetFunction cannot find it: move it into one");
                }
                String other = fileOf.put(k.getKey(), e.getKey());
                if (other != null) {
                    problems.add("kernel " + k.getKey() + " is defined in both " + other + " and " + e.getKey()
                            + ": keep one");
                }
            }
        }
        Map<String, List<Pattern>> launched = new HashMap<>();
        for (Map.Entry<String, String> j : new TreeMap<>(java).entrySet()) {
            for (Site site : launchSites(j.getKey(), j.getValue(), constants, problems)) {
                launched.computeIfAbsent(site.file, f -> new ArrayList<>()).add(site.name);
                Map<String, Boolean> here = kernelsOf.getOrDefault(site.file, Map.of());
                if (here.keySet().stream().noneMatch(k -> site.name.matcher(k).matches())) {
                    List<String> elsewhere = new ArrayList<>();
                    kernelsOf.forEach((f, ks) -> ks.keySet().stream().filter(k -> site.name.matcher(k).matches())
                            .forEach(k -> elsewhere.add(k + " in " + f)));
                    problems.add(site.where + " asks " + site.file + " for kernel " + site.text + ", which it does not"
                            + " define; " + (elsewhere.isEmpty() ? "no file defines it"
                            : "found " + elsewhere + ": launch it through that file's constant or move it back"));
                }
            }
        }
        for (Map.Entry<String, Map<String, Boolean>> e : kernelsOf.entrySet()) {
            for (String k : e.getValue().keySet()) {
                boolean used = launched.getOrDefault(e.getKey(), List.of()).stream().anyMatch(p -> p.matcher(k).matches());
                if (!used && !NOT_LAUNCHED.containsKey(k)) {
                    problems.add(e.getKey() + ": kernel " + k + " is launched by no Java part through "
                            + "KernelLauncher's constant for " + e.getKey() + ": delete it, or list it in NOT_LAUNCHED "
                            + "with the reason");
                } else if (used && NOT_LAUNCHED.containsKey(k)) {
                    problems.add("NOT_LAUNCHED lists " + k + ", which " + e.getKey() + " launches: remove the entry");
                }
            }
        }
        for (String k : NOT_LAUNCHED.keySet()) {
            if (!fileOf.containsKey(k)) {
                problems.add("NOT_LAUNCHED lists " + k + ", which no kernel file defines: remove the entry");
            }
        }
        return problems;
    }

    /** KernelLauncher's static final String constants that name a {@code .cu} file: constant name to file. */
    static Map<String, String> fileConstants() {
        Map<String, String> out = new TreeMap<>();
        for (Field f : KernelLauncher.class.getDeclaredFields()) {
            if (Modifier.isStatic(f.getModifiers()) && f.getType() == String.class) {
                try {
                    f.setAccessible(true);
                    String v = (String) f.get(null);
                    if (v.endsWith(".cu")) {
                        out.put(f.getName(), v);
                    }
                } catch (IllegalAccessException e) {
                    throw new IllegalStateException(e);
                }
            }
        }
        return out;
    }

    // ------------------------------------------------------------------------------------------------ .cu side

    private static final Pattern MACRO = Pattern.compile("(?m)^[ \\t]*#define[ \\t]+(\\w+)\\(([^)]*)\\)((?:[^\\n]*\\\\\\n)*[^\\n]*)");
    private static final Pattern GLOBAL = Pattern.compile(
            "__global__\\s+void\\s+(?:__launch_bounds__\\s*\\((?:[^()]|\\([^()]*\\))*\\)\\s+)?(\\w+)\\s*\\(");
    private static final Pattern EXTERN_C = Pattern.compile("extern\\s+\"C\"\\s*(\\{)?");

    /** The {@code __global__} functions of a kernel file: name to whether it has C linkage. */
    static Map<String, Boolean> kernels(String source) {
        String src = stripComments(source);
        // expand the function-like macros that define kernels, at their invocations
        Matcher d = MACRO.matcher(src);
        Map<String, String[]> macros = new LinkedHashMap<>();
        while (d.find()) {
            String body = d.group(3).replace("\\\n", "\n");
            if (body.contains("__global__")) {
                macros.put(d.group(1), new String[] {d.group(2), body});
            }
        }
        src = MACRO.matcher(src).replaceAll(m -> macros.containsKey(m.group(1)) ? "" : Matcher.quoteReplacement(m.group()));
        for (Map.Entry<String, String[]> m : macros.entrySet()) {
            String[] params = m.getValue()[0].split(",", -1);
            Matcher call = Pattern.compile("(?m)^[ \\t]*" + m.getKey() + "\\(([^)]*)\\)").matcher(src);
            StringBuilder sb = new StringBuilder();
            while (call.find()) {
                String[] args = call.group(1).split(",", -1);
                String body = m.getValue()[1];
                for (int i = 0; i < params.length; i++) {
                    body = body.replaceAll("\\b" + params[i].trim() + "\\b",
                            Matcher.quoteReplacement(i < args.length ? args[i].trim() : ""));
                }
                call.appendReplacement(sb, Matcher.quoteReplacement(body.replaceAll("\\s*##\\s*", "")));
            }
            call.appendTail(sb);
            src = sb.toString();
        }
        // extern "C" { ... } regions and single extern "C" declarations
        List<int[]> cRegions = new ArrayList<>();
        Matcher e = EXTERN_C.matcher(src);
        while (e.find()) {
            if (e.group(1) == null) {
                int stmt = src.indexOf(';', e.end());
                int brace = src.indexOf('{', e.end());
                cRegions.add(new int[] {e.start(), brace >= 0 && (stmt < 0 || brace < stmt) ? brace : stmt});
                continue;
            }
            int depth = 1, i = e.end();
            for (; i < src.length() && depth > 0; i++) {
                depth += src.charAt(i) == '{' ? 1 : src.charAt(i) == '}' ? -1 : 0;
            }
            cRegions.add(new int[] {e.start(), i});
        }
        Map<String, Boolean> out = new TreeMap<>();
        Matcher g = GLOBAL.matcher(src);
        while (g.find()) {
            int at = g.start();
            out.put(g.group(1), cRegions.stream().anyMatch(r -> r[0] <= at && at < r[1]));
        }
        return out;
    }

    // ------------------------------------------------------------------------------------------------ Java side

    /** One launch alternative: the file asked and a pattern of the kernel names it may ask for. */
    private record Site(String where, String file, Pattern name, String text) {
    }

    /** An alternative value of an expression: under these condition values, this text (a file or a name pattern). */
    private record Alt(Map<String, Boolean> when, List<String> parts) {
        Alt join(Alt o) {
            Map<String, Boolean> w = new TreeMap<>(when);
            for (Map.Entry<String, Boolean> e : o.when.entrySet()) {
                if (w.containsKey(e.getKey()) && w.get(e.getKey()) != e.getValue()) {
                    return null;
                }
                w.put(e.getKey(), e.getValue());
            }
            List<String> p = new ArrayList<>(parts);
            p.addAll(o.parts);
            return new Alt(w, p);
        }
    }

    /** A run-time part of a kernel name (a variable, a method call): any identifier characters. */
    private static final String ANY = "\u0000";

    private static List<Site> launchSites(String javaFile, String source, Map<String, String> constants,
                                          List<String> problems) {
        String src = stripComments(source);
        // String variables and fields with an initializer: name to expression (the last one wins; names are unique
        // enough within one class of this package, and a clash fails the check rather than passing it)
        Map<String, String> vars = new HashMap<>();
        Matcher v = Pattern.compile("\\bString\\s+(\\w+)\\s*=\\s*([^;]+);").matcher(src);
        while (v.find()) {
            vars.put(v.group(1), v.group(2).trim());
        }
        List<Site> sites = new ArrayList<>();
        Matcher call = Pattern.compile("\\b(\\w+)\\s*\\(").matcher(src);
        while (call.find()) {
            List<String> args = arguments(src, call.end());
            if (args.size() < 2 || Pattern.matches("(if|for|while|switch|catch|synchronized|return)", call.group(1))) {
                continue;
            }
            List<Alt> files = eval(args.get(0), vars, constants, true);
            if (files == null) {
                continue; // not a kernel file: an ordinary call, or a helper forwarding its own parameters
            }
            int line = 1 + (int) src.substring(0, call.start()).chars().filter(c -> c == '\n').count();
            String where = javaFile + ":" + line + " (" + call.group(1) + ")";
            List<Alt> names = eval(args.get(1), vars, constants, false);
            if (names == null) {
                problems.add(where + ": the kernel name " + args.get(1) + " cannot be read from the source: pass a "
                        + "literal, or literals joined by + and ?:");
                continue;
            }
            for (Alt f : files) {
                for (Alt n : names) {
                    Alt both = f.join(n);
                    if (both == null) {
                        continue;
                    }
                    StringBuilder re = new StringBuilder();
                    StringBuilder text = new StringBuilder();
                    boolean literal = false;
                    for (String p : n.parts) {
                        re.append(p.equals(ANY) ? "\\w*" : Pattern.quote(p));
                        text.append(p.equals(ANY) ? "*" : p);
                        literal |= !p.equals(ANY) && !p.isEmpty();
                    }
                    if (!literal) {
                        problems.add(where + ": the kernel name " + args.get(1) + " has no literal part: the check "
                                + "cannot tell which kernel it launches");
                        continue;
                    }
                    sites.add(new Site(where, String.join("", f.parts), Pattern.compile(re.toString()),
                            "\"" + text + "\"" + (both.when.isEmpty() ? "" : " (where " + both.when + ")")));
                }
            }
        }
        return sites;
    }

    /**
     * The alternatives of expression {@code expr}: as a file ({@code asFile}: null unless every alternative is a file
     * constant) or as a kernel name (null where nothing of it is a literal or a choice of literals).
     */
    private static List<Alt> eval(String expr, Map<String, String> vars, Map<String, String> constants,
                                  boolean asFile) {
        expr = expr.trim();
        while (expr.startsWith("(") && closing(expr, 0) == expr.length() - 1) {
            expr = expr.substring(1, expr.length() - 1).trim();
        }
        int q = topLevel(expr, '?');
        if (q >= 0) {
            int colon = topLevel(expr.substring(q + 1), ':') + q + 1;
            String cond = expr.substring(0, q).trim();
            List<Alt> a = eval(expr.substring(q + 1, colon), vars, constants, asFile);
            List<Alt> b = eval(expr.substring(colon + 1), vars, constants, asFile);
            if (a == null || b == null) {
                return null;
            }
            List<Alt> out = new ArrayList<>();
            for (Alt x : a) {
                Alt y = new Alt(Map.of(cond, true), List.of()).join(x);
                if (y != null) {
                    out.add(y);
                }
            }
            for (Alt x : b) {
                Alt y = new Alt(Map.of(cond, false), List.of()).join(x);
                if (y != null) {
                    out.add(y);
                }
            }
            return out;
        }
        List<String> terms = splitTopLevel(expr, '+');
        if (terms.size() > 1) {
            if (asFile) {
                return null;
            }
            List<Alt> acc = List.of(new Alt(Map.of(), List.of()));
            for (String t : terms) {
                List<Alt> next = eval(t, vars, constants, false);
                List<Alt> joined = new ArrayList<>();
                for (Alt x : acc) {
                    for (Alt y : next == null ? List.of(new Alt(Map.of(), List.of(ANY))) : next) {
                        Alt z = x.join(y);
                        if (z != null) {
                            joined.add(z);
                        }
                    }
                }
                acc = joined;
            }
            return acc;
        }
        if (expr.startsWith("\"") && expr.endsWith("\"") && expr.length() >= 2) {
            return asFile ? null : List.of(new Alt(Map.of(), List.of(expr.substring(1, expr.length() - 1))));
        }
        String id = expr.startsWith("KernelLauncher.") ? expr.substring("KernelLauncher.".length()) : expr;
        if (asFile && constants.containsKey(id)) {
            return List.of(new Alt(Map.of(), List.of(constants.get(id))));
        }
        if (vars.containsKey(id) && id.matches("\\w+") && !vars.get(id).equals(expr)) {
            return eval(vars.get(id), vars, constants, asFile);
        }
        return null;
    }

    private static int closing(String s, int open) {
        int depth = 0;
        for (int i = open; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"') {
                i = s.indexOf('"', i + 1);
            } else if (c == '(' || c == '[') {
                depth++;
            } else if ((c == ')' || c == ']') && --depth == 0) {
                return i;
            }
        }
        return -1;
    }

    private static int topLevel(String s, char want) {
        int depth = 0;
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"') {
                i = s.indexOf('"', i + 1);
            } else if (c == '(' || c == '[') {
                depth++;
            } else if (c == ')' || c == ']') {
                depth--;
            } else if (c == want && depth == 0) {
                return i;
            }
        }
        return -1;
    }

    private static List<String> splitTopLevel(String s, char sep) {
        List<String> out = new ArrayList<>();
        int at;
        while ((at = topLevel(s, sep)) >= 0) {
            out.add(s.substring(0, at));
            s = s.substring(at + 1);
        }
        out.add(s);
        return out;
    }

    /** The top-level arguments of the call whose argument list starts at {@code from} (just after its "("). */
    private static List<String> arguments(String src, int from) {
        int close = closing(src, from - 1);
        if (close < 0) {
            return List.of();
        }
        String inside = src.substring(from, close).trim();
        return inside.isEmpty() ? List.of() : splitTopLevel(inside, ',');
    }

    /** The text without // and block comments (string and char literals kept; a comment is replaced by a space). */
    static String stripComments(String s) {
        StringBuilder out = new StringBuilder(s.length());
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\'') {
                int j = i + 1;
                while (j < s.length() && s.charAt(j) != c) {
                    j += s.charAt(j) == '\\' ? 2 : 1;
                }
                out.append(s, i, Math.min(s.length(), j + 1));
                i = j;
            } else if (c == '/' && i + 1 < s.length() && s.charAt(i + 1) == '/') {
                int j = s.indexOf('\n', i);
                i = (j < 0 ? s.length() : j) - 1;
                out.append(' ');
            } else if (c == '/' && i + 1 < s.length() && s.charAt(i + 1) == '*') {
                int j = s.indexOf("*/", i + 2);
                String gone = s.substring(i, j < 0 ? s.length() : j + 2);
                out.append(gone.replaceAll("[^\\n]", " "));
                i = (j < 0 ? s.length() : j + 2) - 1;
            } else {
                out.append(c);
            }
        }
        return out.toString();
    }

    // ------------------------------------------------------------------------------------------------ sources

    private static Map<String, String> kernelFiles() throws IOException {
        return read(CUDA, ".cu");
    }

    private static Map<String, String> javaSources() throws IOException {
        return read(JAVA, ".java");
    }

    private static Map<String, String> read(Path dir, String suffix) throws IOException {
        assertTrue(Files.isDirectory(dir), dir.toAbsolutePath() + " is missing: run the test from gpu-executor or the repository root");
        Map<String, String> out = new TreeMap<>();
        try (Stream<Path> files = Files.list(dir)) {
            for (Path p : files.filter(p -> p.getFileName().toString().endsWith(suffix)).sorted().toList()) {
                out.put(p.getFileName().toString(), Files.readString(p, StandardCharsets.UTF_8));
            }
        }
        assertTrue(out.size() > 1, "no " + suffix + " files in " + dir.toAbsolutePath());
        return out;
    }
}

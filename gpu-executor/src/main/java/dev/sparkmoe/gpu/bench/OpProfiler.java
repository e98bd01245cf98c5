package dev.sparkmoe.gpu.bench;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.BackendInterceptor;
import java.lang.reflect.Method;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * Where a training step's time goes, op by op: a {@link Backend} wrapper that, while switched on, times every
 * backend call. In {@link Mode#HOST} it measures the host time of each call (launch cost, and the waits of calls
 * that copy to the host); in {@link Mode#DEVICE} it drains the device before and after each call, so the time is
 * the op's own device time plus one launch. Off, it only forwards. GEMMs are keyed by their shape.
 */
public final class OpProfiler extends BackendInterceptor {

    /** What {@link #handler} measures while on. */
    public enum Mode { OFF, HOST, DEVICE }

    private final Map<String, long[]> stats = new HashMap<>();
    private Mode mode = Mode.OFF;
    private Mode measured = Mode.OFF;

    private OpProfiler(Backend inner) {
        super(inner);
    }

    /** A backend that forwards to {@code inner} and can be profiled through {@link #handler}. */
    public static Backend wrap(Backend inner) {
        return new OpProfiler(inner).proxy();
    }

    /** The profiler behind a backend made by {@link #wrap}. */
    public static OpProfiler handler(Backend wrapped) {
        return handlerOf(wrapped, OpProfiler.class);
    }

    public void start(Mode m) {
        stats.clear();
        mode = m;
        measured = m;
    }

    public void stop() {
        mode = Mode.OFF;
    }

    @Override
    public Object invoke(Object proxy, Method method, Object[] args) throws Throwable {
        if (mode == Mode.OFF || method.getName().equals("synchronize") || method.getDeclaringClass() == Object.class) {
            return forward(method, args);
        }
        if (mode == Mode.DEVICE) {
            inner.synchronize();
        }
        long t0 = System.nanoTime();
        Object r = forward(method, args);
        if (mode == Mode.DEVICE) {
            inner.synchronize();
        }
        long dt = System.nanoTime() - t0;
        long[] s = stats.computeIfAbsent(key(method, args), k -> new long[2]);
        s[0] += dt;
        s[1]++;
        return r;
    }

    private static String key(Method m, Object[] a) {
        String n = m.getName();
        if (n.equals("gemm")) {
            return String.format(Locale.ROOT, "gemm %s%s %dx%dx%d", t(a[0]), t(a[1]), a[2], a[3], a[4]);
        }
        if (n.equals("groupedGemm")) {
            int[] mm = (int[]) a[3];
            int[] nn = (int[]) a[4];
            int[] kk = (int[]) a[5];
            return String.format(Locale.ROOT, "groupedGemm %s%s %d groups, %dx%dx%d (first)", t(a[0]), t(a[1]),
                    a[2], mm[0], nn[0], kk[0]);
        }
        return n;
    }

    private static String t(Object b) {
        return (Boolean) b ? "T" : "N";
    }

    /** Per-op rows (ms per step, calls per step) sorted by time, and the total. */
    public String report(int steps) {
        List<Map.Entry<String, long[]>> rows = new ArrayList<>(stats.entrySet());
        rows.sort((x, y) -> Long.compare(y.getValue()[0], x.getValue()[0]));
        long total = 0;
        for (Map.Entry<String, long[]> r : rows) {
            total += r.getValue()[0];
        }
        StringBuilder sb = new StringBuilder();
        sb.append(String.format(Locale.ROOT, "op profile (%s): %.2f ms per step in backend calls%n", measured,
                total / 1e6 / steps));
        for (Map.Entry<String, long[]> r : rows) {
            sb.append(String.format(Locale.ROOT, "  %9.3f ms %7d calls  %s%n", r.getValue()[0] / 1e6 / steps,
                    r.getValue()[1] / steps, r.getKey()));
        }
        return sb.toString();
    }
}

package dev.sparkmoe.gpu.bench;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.BackendInterceptor;
import java.lang.reflect.Method;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * Where a training step's time goes, op by op: a {@link Backend} wrapper that, while switched on, times every
 * backend call. In {@link Mode#HOST} it measures the host time of each call (launch cost, and the waits of calls
 * that copy to the host); in {@link Mode#DEVICE} it drains the device before and after each call, so the time is
 * the op's own device time plus one launch. In {@link Mode#TRACE} nothing is drained: a mark on the device's
 * timeline ({@link Timeline}: CUDA events on the backend's stream) before and after each call gives each op's device
 * time as the step really ran it, and the time between one op's end and the next op's start is the device's idle
 * time, charged to the op it waited for ("idle before ..."): the host enqueueing too slowly (after a copy to the
 * host drained the queue) or the stream waiting on another one (a collective's event). Off, it only forwards. GEMMs
 * are keyed by their shape.
 */
public final class OpProfiler extends BackendInterceptor {

    /** What {@link #handler} measures while on. */
    public enum Mode { OFF, HOST, DEVICE, TRACE }

    private final Map<String, long[]> stats = new HashMap<>();
    private final List<String> traced = new ArrayList<>(); // TRACE: the key of each call, marks 2i and 2i + 1
    private long[] hostTimes = new long[256]; // TRACE: host clock when call i began (2i) and returned (2i + 1)
    private Timeline timeline;
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
        traced.clear();
        if (m == Mode.TRACE && timeline == null) {
            timeline = Timeline.of(inner);
        }
        mode = m;
        measured = m;
    }

    /** Stops; in {@link Mode#TRACE} waits for the device and turns the marks into the report's rows. */
    public void stop() {
        if (mode == Mode.TRACE) {
            double[] ms = timeline.drain();
            gaps.clear();
            for (int i = 0; i < traced.size(); i++) {
                String k = traced.get(i);
                add(k, Math.round((ms[2 * i + 1] - ms[2 * i]) * 1e6));
                if (i > 0) {
                    double idle = Math.max(0, ms[2 * i] - ms[2 * i - 1]);
                    add("idle before " + k, Math.round(idle * 1e6));
                    StringBuilder before = new StringBuilder();
                    for (int j = Math.max(0, i - 4); j < i; j++) {
                        before.append(before.length() == 0 ? "" : " > ").append(traced.get(j));
                    }
                    double host = (hostTimes[2 * i] - hostTimes[2 * i - 1]) / 1e6;
                    gaps.add(new Gap(idle, i, ms[2 * i], host, before.toString(), k));
                }
            }
            gaps.sort((a, b) -> Double.compare(b.ms, a.ms));
            gaps.subList(Math.min(gaps.size(), LONGEST_GAPS), gaps.size()).clear();
            traced.clear();
        }
        mode = Mode.OFF;
    }

    /**
     * The longest idle times of the last trace: where (call index, ms into the trace), the host time between the two
     * calls (outside the backend: model code, hooks, collectives), the calls before, the next. An idle time about as
     * long as the host's says the host was late; a much longer one, that the stream waited (another stream's event).
     */
    private record Gap(double ms, int call, double at, double hostMs, String after, String before) {
    }

    private static final int LONGEST_GAPS = 16;
    private final List<Gap> gaps = new ArrayList<>();

    private void add(String key, long nanos) {
        long[] s = stats.computeIfAbsent(key, x -> new long[2]);
        s[0] += nanos;
        s[1]++;
    }

    @Override
    public Object invoke(Object proxy, Method method, Object[] args) throws Throwable {
        if (mode == Mode.OFF || method.getName().equals("synchronize") || method.getDeclaringClass() == Object.class) {
            return forward(method, args);
        }
        if (mode == Mode.TRACE) {
            // the key is made before the first mark: host time between two calls' marks is idle time, and the
            // first String.format of a run alone takes milliseconds (class loading)
            String k = key(method, args);
            int i = traced.size();
            if (2 * i + 2 > hostTimes.length) {
                hostTimes = Arrays.copyOf(hostTimes, 2 * hostTimes.length);
            }
            hostTimes[2 * i] = System.nanoTime();
            timeline.mark();
            Object r = forward(method, args);
            timeline.mark();
            traced.add(k);
            hostTimes[2 * i + 1] = System.nanoTime();
            return r;
        }
        if (mode == Mode.DEVICE) {
            inner.synchronize();
        }
        long t0 = System.nanoTime();
        Object r = forward(method, args);
        if (mode == Mode.DEVICE) {
            inner.synchronize();
        }
        add(key(method, args), System.nanoTime() - t0);
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
        if (measured == Mode.TRACE) {
            long idle = 0;
            for (Map.Entry<String, long[]> r : rows) {
                idle += r.getKey().startsWith("idle before ") ? r.getValue()[0] : 0;
            }
            sb.append(String.format(Locale.ROOT, "op trace (TRACE): %.2f ms per step on the device from the first "
                    + "call to the last: %.2f ms in calls, %.2f ms idle between them%n", total / 1e6 / steps,
                    (total - idle) / 1e6 / steps, idle / 1e6 / steps));
        } else {
            sb.append(String.format(Locale.ROOT, "op profile (%s): %.2f ms per step in backend calls%n", measured,
                    total / 1e6 / steps));
        }
        for (Map.Entry<String, long[]> r : rows) {
            sb.append(String.format(Locale.ROOT, "  %9.3f ms %7d calls  %s%n", r.getValue()[0] / 1e6 / steps,
                    r.getValue()[1] / steps, r.getKey()));
        }
        if (measured == Mode.TRACE && !gaps.isEmpty()) {
            sb.append(String.format(Locale.ROOT, "longest idle times (of the last traced step)%n"));
            for (Gap g : gaps) {
                sb.append(String.format(Locale.ROOT, "  %9.3f ms at %8.3f ms, call %6d (host between calls %.3f ms): "
                        + "after %s, before %s%n", g.ms, g.at, g.call, g.hostMs, g.after, g.before));
            }
        }
        return sb.toString();
    }
}

package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.lang.reflect.Method;
import java.lang.reflect.Proxy;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.Deque;
import java.util.HashMap;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.WeakHashMap;

/**
 * Who holds memory, and whether anything is used after it was given back: a {@link Backend} wrapper that follows
 * every tensor the backend allocates ({@link Backend#zeros}, {@link Backend#empty}, {@link Backend#upload}) until it
 * is released ({@link Backend#release}, or the close of the {@link Backend.Scope} it was made in).
 *
 * <ul>
 *   <li><b>Accounting.</b> Live bytes, their peak, and at that peak the live bytes of each allocation site (the
 *       first caller outside the backend package, e.g. {@code Experts.forward:141}). Bytes are counted as a device
 *       backend stores them: the dtype's size an element (a BF16 tensor is 2 bytes an element).
 *       This sees the same allocations on the CPU as on a GPU, so a step's memory can be studied without one.</li>
 *   <li><b>Checking.</b> A released tensor passed to any later call, or released twice, throws
 *       {@link IllegalStateException} naming where it was allocated and released. The CPU backend's release is a
 *       no-op, so without this check a too-early release would pass every CPU test and corrupt memory on a GPU.</li>
 * </ul>
 *
 * <p>Not thread-safe; wrap one backend per rank.
 */
public final class MemoryTracker extends BackendInterceptor {

    private record Alloc(long bytes, String site) {
    }

    private final Map<Tensor, Alloc> live = new IdentityHashMap<>();
    private final Map<Tensor, String> released = new WeakHashMap<>(); // identity: Tensor does not override equals
    private final Deque<List<Tensor>> scopes = new ArrayDeque<>();
    private final Map<String, long[]> siteLive = new HashMap<>(); // site -> {bytes, tensors}
    private boolean following = true;
    private long liveBytes;
    private long peakBytes;
    private String peakSite = "";
    private Map<String, long[]> atPeak = new HashMap<>();

    private MemoryTracker(Backend inner) {
        super(inner);
    }

    /** A backend that forwards to {@code inner} and is tracked by {@link #of}. */
    public static Backend wrap(Backend inner) {
        return new MemoryTracker(inner).proxy();
    }

    /** The tracker behind a backend made by {@link #wrap}. */
    public static MemoryTracker of(Backend wrapped) {
        return handlerOf(wrapped, MemoryTracker.class);
    }

    /** Bytes a device backend holds for a tensor of this dtype and size. */
    public static long deviceBytes(DType dtype, long numel) {
        return numel * dtype.byteSize();
    }

    public long liveBytes() {
        return liveBytes;
    }

    public long peakBytes() {
        return peakBytes;
    }

    /**
     * Whether new allocations record their call site (a stack walk each, about as costly as a small kernel launch).
     * Off, they are still counted and checked, under the site "(not followed)": for steps whose speed matters.
     */
    public void setFollowing(boolean on) {
        following = on;
    }

    /** Starts a new peak from what is live now. */
    public void resetPeak() {
        peakBytes = liveBytes;
        peakSite = "";
        atPeak = copy(siteLive);
    }

    @Override
    public Object invoke(Object proxy, Method method, Object[] args) throws Throwable {
        if (method.getDeclaringClass() == Object.class) {
            return forward(method, args);
        }
        String name = method.getName();
        if (name.equals("release") && released.containsKey((Tensor) args[0])) {
            Tensor t = (Tensor) args[0];
            throw new IllegalStateException("tensor " + Arrays.toString(t.shape()) + " released twice; it was "
                    + released.get(t));
        }
        if (args != null && !name.equals("upload")) { // upload takes a host tensor (on the CPU, maybe a released one)
            for (Object a : args) {
                checkNotReleased(a, name);
            }
        }
        switch (name) {
            case "release": {
                Tensor t = (Tensor) args[0];
                Object r = forward(method, args);
                forget(t, true);
                return r;
            }
            case "openScope": {
                Backend.Scope s = (Backend.Scope) forward(method, args);
                List<Tensor> owned = new ArrayList<>();
                scopes.push(owned);
                return (Backend.Scope) () -> {
                    s.close();
                    if (scopes.peek() != owned) {
                        throw new IllegalStateException("scopes closed out of order");
                    }
                    scopes.pop();
                    for (Tensor t : owned) {
                        if (live.containsKey(t)) {
                            forget(t, false);
                        }
                    }
                };
            }
            case "zeros": case "empty": case "emptyGemmOperand": case "upload": {
                Tensor t = (Tensor) forward(method, args);
                if (!live.containsKey(t)) {
                    track(t);
                }
                return t;
            }
            default:
                return forward(method, args);
        }
    }

    private void checkNotReleased(Object a, String call) {
        if (a instanceof Tensor t) {
            String where = released.get(t);
            if (where != null) {
                throw new IllegalStateException(call + " was given a tensor " + Arrays.toString(t.shape())
                        + " that was " + where);
            }
        } else if (a instanceof Collection<?> c) {
            for (Object o : c) {
                checkNotReleased(o, call);
            }
        }
    }

    private void track(Tensor t) {
        String site = following ? site() : "(not followed)";
        Alloc a = new Alloc(deviceBytes(t.dtype(), t.numel()), site);
        live.put(t, a);
        if (!scopes.isEmpty()) {
            scopes.peek().add(t);
        }
        long[] s = siteLive.computeIfAbsent(site, k -> new long[2]);
        s[0] += a.bytes;
        s[1]++;
        liveBytes += a.bytes;
        if (liveBytes > peakBytes) {
            peakBytes = liveBytes;
            peakSite = site;
            atPeak = copy(siteLive);
        }
    }

    private void forget(Tensor t, boolean explicit) {
        Alloc a = live.remove(t);
        if (a == null) {
            return; // made before tracking started, or by another path (a view): nothing to account
        }
        liveBytes -= a.bytes;
        long[] s = siteLive.get(a.site);
        s[0] -= a.bytes;
        s[1]--;
        released.put(t, "allocated at " + a.site + " and " + (explicit ? "released at " + site()
                : "released when its scope closed"));
    }

    private static Map<String, long[]> copy(Map<String, long[]> m) {
        Map<String, long[]> c = new HashMap<>();
        for (Map.Entry<String, long[]> e : m.entrySet()) {
            if (e.getValue()[0] != 0) {
                c.put(e.getKey(), e.getValue().clone());
            }
        }
        return c;
    }

    private static final StackWalker WALKER = StackWalker.getInstance(StackWalker.Option.RETAIN_CLASS_REFERENCE);

    /** The first frame outside this wrapper, the backends and reflection: "Class.method:line". */
    private static String site() {
        return WALKER.walk(frames -> frames
                .filter(f -> {
                    Class<?> k = f.getDeclaringClass();
                    String c = k.getName();
                    return k != MemoryTracker.class && !Backend.class.isAssignableFrom(k) && !c.startsWith("java.")
                            && !c.startsWith("jdk.") && !c.startsWith("com.sun.") && !Proxy.isProxyClass(k);
                })
                .findFirst()
                .map(f -> {
                    String c = f.getClassName();
                    return c.substring(c.lastIndexOf('.') + 1) + "." + f.getMethodName() + ":" + f.getLineNumber();
                })
                .orElse("?"));
    }

    /** The peak, and the live bytes of each allocation site at that moment, largest first. */
    public String report() {
        List<Map.Entry<String, long[]>> rows = new ArrayList<>(atPeak.entrySet());
        rows.sort((x, y) -> Long.compare(y.getValue()[0], x.getValue()[0]));
        StringBuilder sb = new StringBuilder();
        sb.append(String.format(Locale.ROOT, "memory: peak %.3f GB live (reached at %s), %.3f GB live now%n",
                peakBytes / 1e9, peakSite, liveBytes / 1e9));
        for (Map.Entry<String, long[]> r : rows) {
            sb.append(String.format(Locale.ROOT, "  %9.1f MB %6d tensors  %s%n", r.getValue()[0] / 1e6,
                    r.getValue()[1], r.getKey()));
        }
        return sb.toString();
    }
}

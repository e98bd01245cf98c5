package dev.sparkmoe.core.testing;

import dev.sparkmoe.core.backend.Backend;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Proxy;

/** A backend whose calls go to a handler first, which may answer them itself or pass them on to the inner backend. */
public final class Intercept {
    private Intercept() {
    }

    /** What the handler does with a call: returns its result, or {@link #PASS} to run it on the inner backend. */
    @FunctionalInterface
    public interface Handler {
        Object handle(String name, Object[] args) throws Throwable;
    }

    /** The handler's answer that lets the inner backend run the call. */
    public static final Object PASS = new Object();

    public static Backend over(Backend inner, Handler h) {
        return (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class},
                (proxy, method, args) -> {
                    Object r = h.handle(method.getName(), args);
                    return r != PASS ? r : invoke(inner, method, args);
                });
    }

    private static Object invoke(Backend inner, Method method, Object[] args) throws Throwable {
        try {
            return method.invoke(inner, args);
        } catch (InvocationTargetException e) {
            throw e.getCause();
        }
    }
}

package dev.sparkmoe.core.backend;

import java.lang.reflect.InvocationHandler;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Proxy;

/**
 * The plumbing shared by {@link Backend} wrappers that watch every call (memory accounting, per-op timing): a dynamic
 * proxy over the {@code Backend} interface whose calls reach this handler, which does its work around
 * {@link #forward}. Default methods of {@code Backend} are intercepted as calls of their own and forwarded whole.
 */
public abstract class BackendInterceptor implements InvocationHandler {
    protected final Backend inner;

    protected BackendInterceptor(Backend inner) {
        this.inner = inner;
    }

    /** A backend whose every call goes through this handler. */
    protected final Backend proxy() {
        return (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class}, this);
    }

    /** The handler of type {@code type} behind a backend made by {@link #proxy()}. */
    protected static <H extends BackendInterceptor> H handlerOf(Backend wrapped, Class<H> type) {
        return type.cast(Proxy.getInvocationHandler(wrapped));
    }

    /** Runs the call on the wrapped backend, rethrowing what it threw. */
    protected final Object forward(Method method, Object[] args) throws Throwable {
        try {
            return method.invoke(inner, args);
        } catch (InvocationTargetException e) {
            throw e.getCause();
        }
    }
}

package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.tensor.DType;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;

/**
 * A backend whose GEMMs take bf16 operands ({@link Backend#gemmDType} answers BF16, as the CUDA backend does at bf16
 * precision), played by another backend: every call goes to it unchanged. On the CPU backend, whose BF16 tensors
 * hold bf16 values as f32, the model's bf16 paths (the copies, the bf16 gradient of the loss) run for real.
 */
public final class Bf16Gemms {
    private Bf16Gemms() {
    }

    public static Backend over(Backend inner) {
        return (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class},
                (proxy, method, args) -> {
                    if (method.getName().equals("gemmDType")) {
                        return DType.BF16;
                    }
                    try {
                        return method.invoke(inner, args);
                    } catch (InvocationTargetException e) {
                        throw e.getCause();
                    }
                });
    }
}

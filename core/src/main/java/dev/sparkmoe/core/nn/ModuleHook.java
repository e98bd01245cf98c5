package dev.sparkmoe.core.nn;

/** Callbacks around a module's forward and backward; every method defaults to doing nothing. */
public interface ModuleHook {
    default void beforeForward(Module m) {
    }

    default void afterForward(Module m) {
    }

    default void beforeBackward(Module m) {
    }

    default void afterBackward(Module m) {
    }
}

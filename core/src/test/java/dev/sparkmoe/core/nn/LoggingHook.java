package dev.sparkmoe.core.nn;

import java.util.List;
import java.util.function.Consumer;

/**
 * A test hook that writes "fwd+ NAME", "fwd- NAME", "bwd+ NAME" and "bwd- NAME" into a log as the model calls it
 * (NAME: the module's path, "root" for the model itself), then runs {@code afterBackward} on the module, if given:
 * tests read the order in which the model and other hooks (FSDP's) act from the log.
 */
public final class LoggingHook implements ModuleHook {
    private final List<String> log;
    private final String name;
    private final Consumer<Module> afterBackward;

    public LoggingHook(List<String> log, Module m, Consumer<Module> afterBackward) {
        this.log = log;
        this.name = m.path().isEmpty() ? "root" : m.path();
        this.afterBackward = afterBackward;
    }

    public LoggingHook(List<String> log, Module m) {
        this(log, m, x -> { });
    }

    @Override
    public void beforeForward(Module x) {
        log.add("fwd+ " + name);
    }

    @Override
    public void afterForward(Module x) {
        log.add("fwd- " + name);
    }

    @Override
    public void beforeBackward(Module x) {
        log.add("bwd+ " + name);
    }

    @Override
    public void afterBackward(Module x) {
        log.add("bwd- " + name);
        afterBackward.accept(x);
    }
}

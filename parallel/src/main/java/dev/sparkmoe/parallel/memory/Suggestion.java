package dev.sparkmoe.parallel.memory;

/**
 * A change to a request that the planner tried, with its plan.
 *
 * @param change  what to change, with the setting that does it
 * @param effect  what else the change means (global batch, tokens per step), or empty
 * @param plan    the plan of the changed request
 */
public record Suggestion(String change, String effect, MemoryPlan plan) {
}

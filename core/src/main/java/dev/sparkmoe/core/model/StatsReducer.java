package dev.sparkmoe.core.model;

/**
 * Sums statistics over the data-parallel ranks (token counts, router statistics) so that losses use global
 * quantities. Within one process it is the identity; the parallel module supplies an all-reduce.
 */
@FunctionalInterface
public interface StatsReducer {
    StatsReducer LOCAL = buf -> { };

    /** In-place sum of {@code buf} over all data-parallel ranks; deterministic. */
    void sum(double[] buf);
}

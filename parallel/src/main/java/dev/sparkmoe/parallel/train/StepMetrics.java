package dev.sparkmoe.parallel.train;

import java.io.Serializable;

/**
 * What one optimizer step measured, identical on every rank (losses are global means).
 *
 * @param step        1-based index of the step just taken
 * @param loss        language-model cross-entropy, mean over the global batch's predicted tokens
 * @param auxLoss     load-balancing loss (before multiplying by router_aux_loss_coef)
 * @param lr          learning rate used for this step
 * @param gradNorm    global gradient norm before clipping
 * @param tokens      predicted tokens in the global batch
 * @param seconds     wall time of the step on this rank
 */
public record StepMetrics(long step, double loss, double auxLoss, double lr, double gradNorm, long tokens,
                          double seconds) implements Serializable {

    public double tokensPerSecond() {
        return seconds > 0 ? tokens / seconds : 0;
    }
}

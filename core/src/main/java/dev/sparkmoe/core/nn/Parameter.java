package dev.sparkmoe.core.nn;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.Arrays;

/**
 * A trainable tensor of a module. {@link #value()} is the full (unsharded) weight that the kernels compute with and
 * {@link #grad()} the full-size gradient that backward accumulates into. Without parallelism both are always there;
 * under FSDP they exist only between a unit's pre- and post-hooks (the FSDP wrapper swaps them in and out), and
 * under expert parallelism "full" means the rank's local experts. A parameter may also start with a shape and no
 * memory (torch's meta device): a parallel plan places it first, and each rank then allocates only its shards.
 */
public final class Parameter {
    private final String name;
    private int[] shape;
    private Tensor value;
    private Tensor grad;
    private final Backend backend;
    private boolean readByGemmsOnly;
    private DType gradDType = DType.F32;

    /** A parameter whose value and gradient live on {@code backend}. */
    public Parameter(String name, Tensor value, Backend backend) {
        this.name = name;
        this.shape = value.shape();
        this.value = value;
        this.backend = backend;
    }

    /** An unmaterialised parameter: a shape, no memory until {@link #setValue} installs one. */
    public Parameter(String name, Backend backend, int... shape) {
        Tensor.numel(shape); // rejects negative dimensions
        this.name = name;
        this.shape = shape.clone();
        this.backend = backend;
    }

    public Backend backend() {
        return backend;
    }

    /**
     * Marks the value as read only as a GEMM operand (projection and expert weights, an untied LM head; not norms or
     * an embedding table), so that a value held in the backend's GEMM dtype ({@link Backend#gemmDType()}) may stand in
     * for the f32 one: FSDP then computes with a param-dtype compute copy of the shard (FSDP2's bf16 param dtype)
     * instead of converting the f32 value at every GEMM. Returns this parameter.
     */
    public Parameter readByGemmsOnly() {
        this.readByGemmsOnly = true;
        return this;
    }

    /** Whether {@link #readByGemmsOnly()} marked this parameter. */
    public boolean isReadByGemmsOnly() {
        return readByGemmsOnly;
    }

    /**
     * The dtype of the gradient buffer this parameter makes ({@link #gradBetaForFullWrite}, {@link #grad}): F32, or
     * the param dtype where FSDP computes with a compute copy and nothing reduces the gradient after the backward
     * (FSDP2 makes the unsharded gradient in the param dtype: the GEMM that writes it rounds its f32 accumulators once).
     * Only for a parameter whose gradient is written whole by GEMMs ({@link #isReadByGemmsOnly()}), never accumulated
     * by an elementwise op. A gradient made already keeps its dtype until {@link #clearGrad()}.
     */
    public void gradDType(DType dtype) {
        if (dtype != DType.F32 && dtype != DType.BF16) {
            throw new IllegalArgumentException("parameter " + name + ": a gradient in " + dtype + " is not supported "
                    + "(F32, or BF16 for a weight read by GEMMs only)");
        }
        if (dtype != DType.F32 && !readByGemmsOnly) {
            throw new IllegalArgumentException("parameter " + name + ": a " + dtype + " gradient needs a weight read "
                    + "by GEMMs only (readByGemmsOnly), whose gradient GEMMs write whole; this one's gradient is "
                    + "accumulated by other ops and stays F32");
        }
        this.gradDType = dtype;
    }

    /** The dtype {@link #gradBetaForFullWrite} and {@link #grad} make the gradient in (see {@link #gradDType(DType)}). */
    public DType gradDType() {
        return gradDType;
    }

    /** Hub-style name with stacked experts, e.g. "model.layers.0.mlp.experts.gate_proj". */
    public String name() {
        return name;
    }

    /** The shape {@link #value()} has when materialised. */
    public int[] shape() {
        return shape.clone();
    }

    public int numel() {
        return (int) Tensor.numel(shape);
    }

    public Tensor value() {
        if (value == null) {
            throw new IllegalStateException("parameter " + name + " is not materialised (sharded and not gathered)");
        }
        return value;
    }

    public boolean isMaterialised() {
        return value != null;
    }

    /** Installs a new full value (FSDP all-gather, EP re-partition, checkpoint load). */
    public void setValue(Tensor v) {
        if (v != null && !Arrays.equals(v.shape(), shape)) {
            throw new IllegalArgumentException("parameter " + name + " has shape " + Arrays.toString(shape)
                    + " but was given " + Arrays.toString(v.shape()));
        }
        this.value = v;
    }

    /** Changes the logical shape (expert parallelism keeps only the local experts). Drops value and grad. */
    public void reshape(int[] newShape) {
        this.shape = newShape.clone();
        this.value = null;
        this.grad = null;
    }

    /** The full-size gradient accumulator, created zeroed (in {@link #gradDType()}) on first use. */
    public Tensor grad() {
        if (grad == null) {
            grad = backend.zeros(gradDType, shape);
        }
        return grad;
    }

    /**
     * For an op that writes EVERY element of the gradient as {@code new + beta * old} (a GEMM's C): the beta to pass.
     * 0 when there is no gradient yet: the buffer is then made without its zero fill ({@link Backend#empty}), which
     * such an op never reads; 1 when it holds gradient already (accumulation). {@link #grad()} then returns the
     * buffer.
     */
    public float gradBetaForFullWrite() {
        if (grad == null) {
            grad = backend.empty(gradDType, shape);
            return 0f;
        }
        return 1f;
    }

    /**
     * Adds a full-size gradient computed elsewhere (the fused loss's LM head gradient) and takes it over: it becomes
     * the gradient when there is none yet (no copy), else it is added to it and released (in F32:
     * {@link GradAccumulation#add}).
     */
    public void accumulateGrad(Tensor g) {
        if (!Arrays.equals(g.shape(), shape)) {
            throw new IllegalArgumentException("gradient of shape " + Arrays.toString(g.shape()) + " given to "
                    + "parameter " + name + " of shape " + Arrays.toString(shape));
        }
        if (grad == null) {
            grad = g;
        } else {
            grad = GradAccumulation.add(backend, grad, g);
        }
    }

    public boolean hasGrad() {
        return grad != null;
    }

    /** Drops the gradient buffer (after it was reduced into a shard, or after the optimizer step). */
    public void clearGrad() {
        grad = null;
    }

    @Override
    public String toString() {
        return "Parameter(" + name + ", " + Arrays.toString(shape) + ")";
    }
}

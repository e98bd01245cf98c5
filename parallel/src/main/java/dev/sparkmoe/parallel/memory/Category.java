package dev.sparkmoe.parallel.memory;

/** What a planned allocation holds, as the plan reports bytes at the peak. */
public enum Category {
    PARAMETERS("parameters (f32 master shards)"),
    COMPUTE_COPIES("compute copies (bf16 shards of the weights only GEMMs read)"),
    OPTIMIZER("optimizer state (AdamW m and v, f32 shards)"),
    GRADIENT_SHARDS("gradient shards (f32; bf16 beside a compute copy)"),
    UNIT_GRADIENTS("unit gradients before reduce-scatter (unsharded)"),
    GATHERED("gathered FSDP units (f32 or bf16 images, in-flight gathers)"),
    INPUTS("token ids, targets"),
    RESIDUAL("saved: residual stream and norms"),
    ATTENTION("saved: attention (q, k, v before and after norm and rope, output, lse)"),
    MOE("saved: MoE routing, dispatch, expert activations (dense MLPs' too)"),
    LOSS("fused LM head and loss (final norm, logits chunk, input gradients)"),
    TEMPORARIES("temporaries (activation gradients, dispatch buffers in flight)"),
    WORKSPACE("backend workspace (bf16 copies, kernel scratch)"),
    LOAD_BUFFER("a piece of the weights on its way into the shards (construction)");

    private final String label;

    Category(String label) {
        this.label = label;
    }

    /** The row label of the plan's table. */
    public String label() {
        return label;
    }

    /** Whether the category is an activation kept from the forward pass for the backward pass. */
    public boolean isActivation() {
        return this == INPUTS || this == RESIDUAL || this == ATTENTION || this == MOE || this == LOSS;
    }
}

package dev.sparkmoe.parallel.fsdp;

import dev.sparkmoe.core.tensor.DType;

/**
 * FSDP2's mixed-precision policy: the dtype parameters are gathered and computed in, the dtype gradients are reduced
 * in, and the dtype of module outputs. Master weights and optimizer state stay f32 in every case. A backend without
 * bf16 kernels (the CPU backend) computes in f32 whatever the policy says and logs that it does.
 */
public record MixedPrecisionPolicy(DType paramDtype, DType reduceDtype, DType outputDtype) {
    public static final MixedPrecisionPolicy FULL_F32 = new MixedPrecisionPolicy(DType.F32, DType.F32, DType.F32);
    public static final MixedPrecisionPolicy BF16 = new MixedPrecisionPolicy(DType.BF16, DType.F32, DType.BF16);

    public MixedPrecisionPolicy {
        for (DType d : new DType[] {paramDtype, reduceDtype, outputDtype}) {
            if (!d.isFloating()) {
                throw new IllegalArgumentException("mixed-precision dtypes must be floating, got " + d);
            }
        }
    }
}

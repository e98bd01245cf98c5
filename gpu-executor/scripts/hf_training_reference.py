"""A multi-step golden file: Hugging Face Qwen3-MoE trained for STEPS AdamW steps on the CPU in float32, so that a
Java trainer can be checked against transformers over a whole run, not only one step.

usage: python3 hf_training_reference.py OUTDIR [STEPS] [B] [T]
writes OUTDIR/config.json, OUTDIR/model.safetensors (initial weights, Hub layout), OUTDIR/training.safetensors
(input_ids I64 [STEPS, B, T]; lm_loss and aux_loss F32 [STEPS], before each step's update) and
OUTDIR/after_training.safetensors (every parameter after the last step, Hub layout).
Model: the tiny fixture config (seed 0, norms perturbed as the fixture generator does). AdamW: lr 1e-3,
betas (0.9, 0.95), eps 1e-8, weight decay 0.1, constant lr, no clipping; labels = inputs (shifted inside the loss).
"""
import os, sys, torch
from safetensors.torch import save_file
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
            norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=128,
            rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, router_aux_loss_coef=0.01)


def hub_layout(state):
    out = {}
    for k, v in state.items():
        if k.endswith("mlp.experts.gate_up_proj"):
            p, i = k[: -len("gate_up_proj")], v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{p}{e}.gate_proj.weight"] = v[e, :i].contiguous(); out[f"{p}{e}.up_proj.weight"] = v[e, i:].contiguous()
        elif k.endswith("mlp.experts.down_proj"):
            p = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{p}{e}.down_proj.weight"] = v[e].contiguous()
        else:
            out[k] = v.contiguous()
    return out


out = sys.argv[1]
steps, B, T = (int(a) for a in (sys.argv[2:3] or ["20"]) + (sys.argv[3:4] or ["2"]) + (sys.argv[4:5] or ["16"]))
torch.manual_seed(0)
config = Qwen3MoeConfig(**TINY); config.output_router_logits = True
model = Qwen3MoeForCausalLM(config).float()
with torch.no_grad():
    for n, p in model.named_parameters():
        if "norm" in n:
            p.add_(0.1 * torch.randn_like(p))
os.makedirs(out, exist_ok=True)
config.save_pretrained(out)
save_file(hub_layout({k: v.detach().clone() for k, v in model.state_dict().items()}), f"{out}/model.safetensors",
          metadata={"format": "pt"})
ids = torch.randint(0, TINY["vocab_size"], (steps, B, T), generator=torch.Generator().manual_seed(1))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
lm, aux = [], []
for s in range(steps):
    r = model(input_ids=ids[s], labels=ids[s], output_router_logits=True)
    a = float(r.aux_loss); lm.append(float(r.loss.detach()) - TINY["router_aux_loss_coef"] * a); aux.append(a)
    r.loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
save_file({"input_ids": ids.contiguous(), "lm_loss": torch.tensor(lm, dtype=torch.float32),
           "aux_loss": torch.tensor(aux, dtype=torch.float32)}, f"{out}/training.safetensors")
save_file(hub_layout({k: v.detach().clone() for k, v in model.state_dict().items()}), f"{out}/after_training.safetensors")
print("lm_loss", [round(x, 4) for x in lm])

"""The PyTorch side of the convergence check: Hugging Face Qwen3-MoE trained with FSDP2 (bf16 MixedPrecisionPolicy,
AdamW) on byte tokens of a text file, from weights it exports first, so that spark-moe can start from the very same
weights and data and the two loss curves can be compared step by step.

usage: torchrun --nproc_per_node=N torch_loss_curve.py CONFIG.json TEXT OUTDIR [STEPS] [B] [T]
writes OUTDIR/init/{config.json,model.safetensors} (Hub layout, per-expert tensors) and OUTDIR/torch_losses.json, or
with RUN=k set OUTDIR/torch_losses_k.json: the convergence check runs the script several times (the same weights and
data; the runs differ by the GPU's own run-to-run variation) and LossCurve decides against their band.
Data: step s, rank r, row b reads T+1 bytes from offset ((s*world + r)*B + b)*(T+1) modulo the file length;
inputs are the first T, labels the last T; the loss is the mean over the global batch.
"""
import json, os, sys, time, torch, torch.distributed as dist, torch.nn.functional as F
from safetensors.torch import save_file
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
from torch.distributed.fsdp import fully_shard, MixedPrecisionPolicy

cfg_path, text_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
steps, B, T = (int(a) for a in (sys.argv[4:5] or ["200"]) + (sys.argv[5:6] or ["4"]) + (sys.argv[6:7] or ["2048"]))
rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
dist.init_process_group("nccl")
cfg = json.load(open(cfg_path)); cfg.setdefault("model_type", "qwen3_moe")
torch.manual_seed(0)
with torch.device("cuda"):
    model = Qwen3MoeForCausalLM._from_config(Qwen3MoeConfig(**cfg), torch_dtype=torch.float32)
if rank == 0:
    os.makedirs(f"{out}/init", exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if k.endswith("mlp.experts.gate_up_proj"):
            p, i = k[: -len("gate_up_proj")], v.shape[1] // 2
            for e in range(v.shape[0]):
                state[f"{p}{e}.gate_proj.weight"] = v[e, :i].contiguous(); state[f"{p}{e}.up_proj.weight"] = v[e, i:].contiguous()
        elif k.endswith("mlp.experts.down_proj"):
            p = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                state[f"{p}{e}.down_proj.weight"] = v[e].contiguous()
        else:
            state[k] = v.contiguous()
    save_file(state, f"{out}/init/model.safetensors", metadata={"format": "pt"})
    model.config.save_pretrained(f"{out}/init")
dist.barrier()
# MP=0 trains in f32 throughout (a reference for how sensitive the curve is to bf16 compute)
mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if os.environ.get("MP", "1") == "1" \
    else MixedPrecisionPolicy()
for layer in model.model.layers:
    fully_shard(layer, mp_policy=mp)
fully_shard(model, mp_policy=mp)
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
data = torch.frombuffer(bytearray(open(text_path, "rb").read()), dtype=torch.uint8).long()
losses, t0 = [], time.time()
for s in range(steps):
    rows = []
    for b in range(B):
        start = ((s * world + rank) * B + b) * (T + 1) % (len(data) - T - 1)
        rows.append(data[start:start + T + 1])
    seq = torch.stack(rows).cuda()
    res = model(input_ids=seq[:, :T], output_router_logits=True)
    loss = F.cross_entropy(res.logits.float().reshape(-1, res.logits.size(-1)), seq[:, 1:].reshape(-1))
    # the optimised loss includes the load-balancing term, as spark-moe's; the curve compared is the LM loss
    (loss + cfg.get("router_aux_loss_coef", 0.001) * res.aux_loss).backward()
    opt.step(); opt.zero_grad(set_to_none=True)
    l = loss.detach().clone(); dist.all_reduce(l); losses.append(l.item() / world)
if rank == 0:
    json.dump({"impl": "pytorch-fsdp2-hf" + ("" if os.environ.get("MP", "1") == "1" else "-f32"), "world": world, "B": B, "T": T, "losses": losses,
               "seconds": time.time() - t0},
              open(f"{out}/torch_losses" + (f"_{os.environ['RUN']}" if os.environ.get("RUN") else "") + ".json", "w"))
    print("torch losses", [round(x, 4) for x in losses[:5]], "...", [round(x, 4) for x in losses[-3:]])
dist.destroy_process_group()

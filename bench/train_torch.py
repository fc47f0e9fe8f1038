#!/usr/bin/python3
"""PyTorch peer for kiln's CPU training benchmark: tokens/s of forward + loss + backward + AdamW on one model.

Usage (Debian's interpreter, which has torch):
  /usr/bin/python3 bench/train_torch.py --model-config configs/models/llama-bench.json --batch 8 --seq 256 \
      --threads 2 --steps 5 [--seed 0] [--warmup 2] [--precision fp32|bf16] [--lora R]
--lora R: the model frozen and LoRA (r R, alpha 2R, PEFT's all-linear: every linear layer but the head, A
Kaiming-uniform, B zero) trained, as PEFT + TRL do; AdamW over the adapter only.
On a GPU (the peer of `kiln bench train --device cuda`, bench/gpu_bench.sh):
  python3 bench/train_torch.py --device cuda --model-config configs/models/gpt2-124m.json --batch 16 --seq 1024 \
      --threads 16 --steps 20 --precision bf16 [--compile] [--peak-tflops 989]
  cuda: the model on the GPU, attention through F.scaled_dot_product_attention (flash), bf16 autocast, fused
  AdamW, torch.compile with --compile; also prints "tflops" and "mfu" (against --peak-tflops, dense bf16).
Prints ONE JSON line:
  {"impl":"pytorch","model":...,"precision":...,"threads":N,"batch":B,"seq":T,"tokens_per_s":...,"step_ms_median":...,
   "gflops":...,"params":...,"matmul_params":...,"losses":[...]}
tokens_per_s = B*T / median step time; gflops = achieved GFLOP/s at the median step time; losses = one per timed step.
Model: HF init (N(0, initializer_range), GPT-2 c_proj scaled) seeded with --seed; tokens uniform in [0, V) from
--seed + 1, a fresh batch per step (all generated before timing). AdamW lr 1e-4, betas (0.9, 0.95), wd 0.1 on 2-D
non-embedding params. fp32 master weights; bf16 = torch.autocast("cpu", dtype=torch.bfloat16) around forward + loss.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import torch_model as tm  # noqa: E402


def flops_per_step(model, cfg: dict, B: int, T: int) -> float:
    """FLOPs of one training step (forward + backward).

    6 * N_matmul * B*T          weights: 2 FLOPs per multiply-add forward, 4 backward (d input + d weight). N_matmul =
                                every parameter except the input-embedding tables (embed_tokens / wte / wpe are gathers,
                                not matmuls); the lm head is counted, once, also when tied to the embedding.
    + 3 * (2*2*B*T*T*C*L / 2)   attention: QK^T and PV are each 2*B*T*T*C FLOPs forward, halved for the causal mask;
                                x3 for forward + backward.  (C = H*D, the attention width.)
    Norms, activations, softmax and the optimizer are not counted.
    """
    arch = tm.architecture(cfg)
    n = matmul_params(model)
    C = cfg["hidden_size"] if arch == "llama" else cfg["n_embd"]
    if arch == "llama":
        C = cfg["num_attention_heads"] * (cfg.get("head_dim") or C // cfg["num_attention_heads"])
    L = cfg["num_hidden_layers"] if arch == "llama" else cfg["n_layer"]
    return 6.0 * n * B * T + 3 * (2 * 2 * B * T * T * C * L / 2)


def matmul_params(model) -> int:
    n = sum(p.numel() for name, p in model.named_parameters()
            if not any(f".{e}." in f".{name}" for e in tm.EMBEDDING_NAMES))
    if model.tied:
        n += model.lm_head_weight().numel()
    return n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-config", required=True, help="HF config.json (LlamaForCausalLM or GPT2LMHeadModel)")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--steps", type=int, required=True, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--lora", type=int, default=0,
                   help="rank R: freeze the model, train LoRA (alpha 2R) on every linear layer but the head")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (cuda)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100 SXM: 989)")
    a = p.parse_args(argv)
    for k in ("batch", "seq", "threads", "steps"):
        if getattr(a, k) < 1:
            p.error(f"--{k} must be >= 1, got {getattr(a, k)}")
    if a.warmup < 0:
        p.error(f"--warmup must be >= 0, got {a.warmup}")
    if not os.path.isfile(a.model_config):
        p.error(f"no model config '{a.model_config}'")
    with open(a.model_config) as f:
        cfg = json.load(f)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    if a.device == "cuda":
        # The fast path PyTorch users take: fused SDPA (FlashAttention) instead of eager attention.
        import torch.nn.functional as F
        tm.causal_attention = lambda q, k, v, scale: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                     scale=scale)
        torch.backends.cuda.matmul.allow_tf32 = True
    model = tm.init_weights(tm.build_model(cfg), seed=a.seed)
    model.to(dev)
    model.train()
    lora = tm.add_lora(model, a.lora, 2.0 * a.lora, a.seed) if a.lora else None
    fwd = torch.compile(model) if a.compile else model
    V = cfg["vocab_size"]
    g = torch.Generator().manual_seed(a.seed + 1)
    n_total = a.warmup + a.steps
    data = torch.randint(0, V, (n_total, a.batch, a.seq + 1), generator=g).to(dev)  # (steps, B, T+1)
    groups = [{"params": list(lora.values()), "weight_decay": 0.1}] if lora else tm.weight_decay_groups(model, 0.1)
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
                            **({"fused": True} if a.device == "cuda" else {}))

    times, losses = [], []
    for i in range(n_total):
        x, y = data[i, :, :-1], data[i, :, 1:]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if a.precision == "bf16":
            with torch.autocast(a.device, dtype=torch.bfloat16):
                loss = tm.lm_loss(fwd(x), y)
        else:
            loss = tm.lm_loss(fwd(x), y)
        loss.backward()
        opt.step()
        lv = loss.item()  # waits for the GPU
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt)
            losses.append(round(lv, 6))

    med = statistics.median(times)
    tokens = a.batch * a.seq
    gpu = {}
    if a.device == "cuda":
        tflops = flops_per_step(model, cfg, a.batch, a.seq) / med / 1e12
        gpu = {"device": "cuda", "gpu": torch.cuda.get_device_name(0), "compile": a.compile,
               "tflops": round(tflops, 2), "mfu": round(tflops / a.peak_tflops, 4), "peak_tflops": a.peak_tflops}
    print(json.dumps({**gpu,
        "impl": "pytorch", "model": os.path.basename(a.model_config), "precision": a.precision,
        "method": f"lora r {a.lora}" if a.lora else "full",
        "threads": a.threads, "batch": a.batch, "seq": a.seq, "torch": torch.__version__,
        "tokens_per_s": round(tokens / med, 1), "step_ms_median": round(med * 1e3, 2),
        "gflops": round(flops_per_step(model, cfg, a.batch, a.seq) / med / 1e9, 2),
        "params": sum(p.numel() for p in model.parameters()), "matmul_params": matmul_params(model),
        "losses": losses,
    }))


if __name__ == "__main__":
    main()

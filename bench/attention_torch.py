#!/usr/bin/env python3
"""PyTorch peer of `kiln bench attention`: causal F.scaled_dot_product_attention forward and backward on the GPU.

Usage: python3 bench/attention_torch.py --batch 4 --seq 4096 --heads 16 --kv-heads 16 --head-dim 128 [--reps 20]
Prints ONE JSON line with fwd_ms, bwd_ms (medians over --reps after a warmup) and TFLOP/s counted as kiln counts
them (and as FlashAttention's benchmarks do): forward 4*B*H*T*T*D/2 (causal), backward 2.5x forward.
GQA (kv-heads < heads) uses enable_gqa=True.
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for k, d in (("batch", 4), ("seq", 4096), ("heads", 16), ("kv-heads", 16), ("head-dim", 128), ("reps", 20)):
        p.add_argument(f"--{k}", type=int, default=d)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    a = p.parse_args()
    dt = torch.bfloat16 if a.precision == "bf16" else torch.float32
    B, T, H, K, D = a.batch, a.seq, a.heads, a.kv_heads, a.head_dim
    q = torch.randn(B, H, T, D, device="cuda", dtype=dt, requires_grad=True)
    k = torch.randn(B, K, T, D, device="cuda", dtype=dt, requires_grad=True)
    v = torch.randn(B, K, T, D, device="cuda", dtype=dt, requires_grad=True)
    dout = torch.randn(B, H, T, D, device="cuda", dtype=dt)
    fwd, bwd = [], []
    for r in range(a.reps + 1):
        e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        e0.record()
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=K != H)
        e1.record()
        out.backward(dout)
        e2.record()
        torch.cuda.synchronize()
        q.grad = k.grad = v.grad = None
        if r > 0:
            fwd.append(e0.elapsed_time(e1))
            bwd.append(e1.elapsed_time(e2))
    f = 4.0 * B * H * T * T * D / 2
    fm, bm = statistics.median(fwd), statistics.median(bwd)
    print(json.dumps({"impl": "pytorch-sdpa", "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
                      "precision": a.precision, "batch": B, "seq": T, "heads": H, "kv_heads": K, "head_dim": D,
                      "fwd_ms": round(fm, 4), "bwd_ms": round(bm, 4), "fwd_tflops": round(f / fm / 1e9, 2),
                      "fwd_bwd_tflops": round(3.5 * f / (fm + bm) / 1e9, 2)}))


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Generate the PyTorch oracle for kiln's whole-model parity test (logits, loss, every gradient, AdamW steps).

Usage (Debian's interpreter, which has torch):
  /usr/bin/python3 tests/parity/torch_reference.py --model DIR --batch BATCH.safetensors --out OUT.safetensors \
      [--steps 5 --lr 1e-3 --beta1 0.9 --beta2 0.95 --eps 1e-8 --weight-decay 0.1 --clip 1.0] [--adapter ADIR]

ADIR: a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors). The base is then frozen and
only the adapter trains: each adapted linear layer computes base(x) + s * B(A(x)) with s = lora_alpha / r
(use_rslora: lora_alpha / sqrt(r)), written here from PEFT's documented formula (lora_dropout must be 0:
dropout is random), and grad./final. hold the adapter's tensors under their PEFT names.

DIR: HF checkpoint (config.json + model.safetensors). BATCH: `input_ids` I32 (B, T+1); inputs = [:, :-1],
targets = [:, 1:], targets == -1 ignored. An input of -1 (padding that is also a target) is fed as token 0.
BATCH may instead carry an explicit `targets` I32 (B, T) next to `input_ids` I32 (B, T) (e.g. SFT prompt masking).
OUT (all F32):
  logits        (B, T, V)   initial weights
  loss          []          mean CE over non-ignored targets (Mixtral: plus the auxiliary losses the config turns on),
                            initial weights
  moe_aux, moe_z, moe_dropped  []  Mixtral only: the load-balancing and z losses, dropped (token, expert) pairs
  grad.<name>   param shape d loss / d param at the initial weights (tied embeddings: only the embedding name)
  step_losses   (steps,)    loss before each AdamW step
  final.<name>  param shape weights after the last step
Optimizer: torch.optim.AdamW(betas, eps), constant lr; weight decay only on 2-D non-embedding params (with an
adapter: on every adapter tensor, all 2-D);
clip_grad_norm_(max_norm=clip) before each step when clip > 0. fp32, 2 threads, deterministic.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import torch_model as tm  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="HF checkpoint dir (config.json + model.safetensors)")
    p.add_argument("--batch", required=True, help="safetensors with input_ids I32 (B, T+1)")
    p.add_argument("--out", required=True, help="output safetensors")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--adapter", help="PEFT LoRA adapter dir: freeze the base, train the adapter")
    a = p.parse_args(argv)
    if a.steps < 0:
        p.error(f"--steps must be >= 0, got {a.steps}")
    return a


def load_batch(path: str, vocab: int):
    """-> (inputs (B, T) int64, targets (B, T) int64). Inputs of -1 become token 0 (they only matter as padding)."""
    t = tm.load_file(path)
    if "input_ids" not in t:
        raise ValueError(f"[torch_reference] '{path}' has no 'input_ids' tensor (has {sorted(t)})")
    ids = t["input_ids"]
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"[torch_reference] input_ids must be a 2-D integer tensor, got {ids.dtype}{list(ids.shape)}")
    ids = torch.from_numpy(ids.astype(np.int64))
    if "targets" in t:
        targets = torch.from_numpy(np.asarray(t["targets"]).astype(np.int64))
        if tuple(targets.shape) != tuple(ids.shape):
            raise ValueError(f"[torch_reference] targets {list(targets.shape)} must have the shape of input_ids {list(ids.shape)}")
        inputs = ids
    else:
        if ids.shape[1] < 2:
            raise ValueError(f"[torch_reference] input_ids must be (B, T+1) with T >= 1, got {list(ids.shape)}")
        inputs, targets = ids[:, :-1], ids[:, 1:]
    if bool((((inputs < 0) & (inputs != -1)) | (inputs >= vocab)).any()):
        raise ValueError(f"[torch_reference] input tokens must lie in [0, {vocab}) (or -1); got min {int(inputs.min())} max {int(inputs.max())}")
    if bool((((targets < 0) & (targets != -1)) | (targets >= vocab)).any()):
        raise ValueError(f"[torch_reference] targets must lie in [0, {vocab}) or be -1 (ignored); got min {int(targets.min())} max {int(targets.max())}")
    return inputs.clamp(min=0).contiguous(), targets.contiguous()


def attach_adapter(model: torch.nn.Module, adir: str):
    """Freezes the model and wraps every layer the adapter adapts. -> {PEFT tensor name: Parameter}."""
    with open(os.path.join(adir, "adapter_config.json")) as f:
        cfg = json.load(f)
    if cfg.get("lora_dropout", 0) != 0:
        raise ValueError(f"[torch_reference] {adir}: lora_dropout must be 0 for a deterministic oracle")
    r = int(cfg["r"])
    alpha = float(cfg.get("lora_alpha", r))
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora", False) else alpha / r
    tensors = tm.load_file(os.path.join(adir, "adapter_model.safetensors"))
    for p in model.parameters():
        p.requires_grad_(False)
    prefix, suffix = "base_model.model.", ".lora_A.weight"
    params = {}
    for name in sorted(tensors):
        if not name.endswith(suffix):
            continue
        module = name[len(prefix):-len(suffix)]
        parent_name, _, child = module.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = tm.LoraLinear(getattr(parent, child), torch.from_numpy(tensors[name]),
                              torch.from_numpy(tensors[prefix + module + ".lora_B.weight"]), scaling)
        setattr(parent, child, layer)
        params[name] = layer.lora_A
        params[prefix + module + ".lora_B.weight"] = layer.lora_B
    if not params:
        raise ValueError(f"[torch_reference] {adir}: no lora_A tensors")
    return params


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    model = tm.load_checkpoint(a.model)
    model.train()
    inputs, targets = load_batch(a.batch, model.config["vocab_size"])
    out = {}
    adapter = attach_adapter(model, a.adapter) if a.adapter else None
    trained = adapter if adapter else dict(model.named_parameters())

    logits = model(inputs)
    loss = tm.model_loss(model, logits, targets)
    loss.backward()
    out["logits"] = logits.detach().numpy().astype(np.float32)
    out["loss"] = np.array(loss.item(), dtype=np.float32)
    moe = tm.moe_aux_losses(model)
    if moe is not None:  # a Mixtral model: its auxiliary losses and dropped pairs at the initial weights
        out["moe_aux"] = np.array(moe[0].item(), dtype=np.float32)
        out["moe_z"] = np.array(moe[1].item(), dtype=np.float32)
        out["moe_dropped"] = np.array(sum(m.dropped for m in model.modules()
                                          if isinstance(m, tm.MixtralSparseMoeBlock)), dtype=np.float32)
    for name, p in trained.items():
        out["grad." + name] = p.grad.detach().numpy().copy()
    model.zero_grad(set_to_none=True)

    groups = ([{"params": list(adapter.values()), "weight_decay": a.weight_decay}] if adapter
              else tm.weight_decay_groups(model, a.weight_decay))
    opt = torch.optim.AdamW(groups, lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps)
    step_losses = []
    for _ in range(a.steps):
        opt.zero_grad(set_to_none=True)
        loss = tm.model_loss(model, model(inputs), targets)
        loss.backward()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(list(trained.values()), max_norm=a.clip)
        opt.step()
        step_losses.append(loss.item())
    out["step_losses"] = np.array(step_losses, dtype=np.float32)
    for name, p in trained.items():
        out["final." + name] = p.detach().numpy().copy()

    meta = {k: str(v) for k, v in vars(a).items() if k != "out"}
    tm.save_file(out, a.out, metadata=meta)
    B, T = inputs.shape
    print(f"torch_reference: {tm.architecture(model.config)} B={B} T={T} loss={out['loss']:.6f} "
          f"steps={a.steps} last_loss={step_losses[-1] if step_losses else float('nan'):.6f} -> {a.out}")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:  # bad inputs: one clear line, no traceback
        sys.exit(f"torch_reference: error: {e}")

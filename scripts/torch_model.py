"""PyTorch oracle for kiln's decoders: Hugging Face LlamaForCausalLM / GPT2LMHeadModel semantics.

Test- and benchmark-only (kiln has no Python at run time). Needs PyTorch + numpy, NOT transformers:
run with Debian's interpreter, `/usr/bin/python3`.

Contents
  safetensors I/O  load_file / save_file / read_header   (pure Python + numpy; F32 BF16 F16 F64 I8 U8 I16 I32 I64 BOOL)
  models           LlamaForCausalLM, GPT2LMHeadModel, build_model(config) -> nn.Module
  checkpoints      load_config(dir), load_checkpoint(dir) -> model, save_checkpoint(model, dir), init_weights(model, seed)

Parameter names are exactly the Hugging Face names, so `model.load_state_dict(tensors, strict=True)` works on a
kiln/HF `model.safetensors`. Tied embeddings have ONE parameter (the embedding); the lm head reuses it, so the
state dict holds no `lm_head.weight` (HF does not save it either).

Shape vocabulary: B batch, T time, C channels (hidden), H heads, K kv-heads, D head dim, V vocab, L layers, F ffn dim.
Dropout is not implemented (the oracle is deterministic; kiln's parity tests run without dropout).
"""
from __future__ import annotations

import json
import math
import os
import struct
from typing import Dict, Iterable, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------------------------------

# safetensors dtype tag -> (numpy dtype used on disk, bytes per element). BF16 is stored as uint16 bit patterns.
_ST_DTYPES: Dict[str, Tuple[np.dtype, int]] = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "I8": (np.dtype("i1"), 1),
    "U8": (np.dtype("u1"), 1),
    "BOOL": (np.dtype("?"), 1),
}
_NP_TO_ST = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("int16"): "I16",
    np.dtype("int8"): "I8",
    np.dtype("uint8"): "U8",
    np.dtype("bool"): "BOOL",
}
_MAX_HEADER = 100 * 1024 * 1024  # same cap as the reference implementation


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact: bf16 is the top half of an f32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bfloat16 bit patterns, round-to-nearest-even (what torch's .bfloat16() does); NaN stays NaN."""
    u = np.asarray(x, dtype=np.float32).copy(order="C").view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, ((u >> 16) | np.uint32(0x0040)).astype(np.uint16), rounded)
    return rounded


def read_header(path: str) -> Tuple[dict, int]:
    """Return (header dict, byte offset where the data section starts). Validates the framing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"[safetensors] no file '{path}'")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"[safetensors] '{path}' has {size} bytes, fewer than the 8-byte header length: not a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or 8 + n > size:
            raise ValueError(f"[safetensors] '{path}' declares a {n}-byte header but the file has {size} bytes: truncated or not safetensors")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"[safetensors] '{path}' header is not valid UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"[safetensors] '{path}' header must be a JSON object")
    return header, 8 + n


def load_file(path: str, as_torch: bool = False, bf16_to_f32: bool = True) -> Dict[str, object]:
    """Read every tensor of a safetensors file.

    Returns name -> numpy array (or torch.Tensor when as_torch). BF16 becomes float32 when bf16_to_f32 (the default),
    otherwise stays as uint16 bit patterns (numpy) / torch.bfloat16 (torch). The `__metadata__` entry is skipped
    (use read_header for it). Raises ValueError naming the tensor on any inconsistency.
    """
    header, data_start = read_header(path)
    size = os.path.getsize(path)
    data_len = size - data_start
    with open(path, "rb") as f:
        f.seek(data_start)
        data = f.read()
    out: Dict[str, object] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"[safetensors] '{path}' tensor '{name}' needs dtype, shape and data_offsets; got {info!r}") from None
        if dtype not in _ST_DTYPES:
            raise ValueError(f"[safetensors] '{path}' tensor '{name}' has dtype '{dtype}'; supported: {sorted(_ST_DTYPES)}")
        np_dtype, width = _ST_DTYPES[dtype]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if any(int(d) < 0 for d in shape):
            raise ValueError(f"[safetensors] '{path}' tensor '{name}' has negative dimension in shape {shape}")
        if not (0 <= begin <= end):
            raise ValueError(f"[safetensors] '{path}' tensor '{name}' has bad data_offsets [{begin}, {end}]")
        if end > data_len:
            raise ValueError(f"[safetensors] '{path}' tensor '{name}' ends at data byte {end} but the data section has {data_len} bytes: the file is truncated; re-export it")
        if end - begin != count * width:
            raise ValueError(f"[safetensors] '{path}' tensor '{name}' {dtype}{shape} needs {count * width} bytes but data_offsets span {end - begin}")
        spans.append((begin, end, name))
        arr = np.frombuffer(data, dtype=np_dtype, count=count, offset=begin).reshape(tuple(int(d) for d in shape)).copy()
        if dtype == "BF16" and bf16_to_f32:
            arr = bf16_bits_to_f32(arr)
        if as_torch:
            if dtype == "BF16" and not bf16_to_f32:
                out[name] = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
            else:
                out[name] = torch.from_numpy(arr)
        else:
            out[name] = arr
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"[safetensors] '{path}' tensors '{n0}' and '{n1}' overlap (bytes [{b0},{e0}) and [{b1},{e1}))")
    return out


def _to_numpy_for_save(name: str, t) -> Tuple[str, np.ndarray]:
    """-> (safetensors dtype tag, C-contiguous little-endian array to write)."""
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            return "BF16", t.view(torch.int16).numpy().view(np.uint16)
        t = t.numpy()
    arr = np.asarray(t)
    if arr.dtype not in _NP_TO_ST:
        raise ValueError(f"[safetensors] tensor '{name}' has numpy dtype {arr.dtype}; supported: {[str(d) for d in _NP_TO_ST]} or torch.bfloat16")
    # .copy(order="C") rather than np.ascontiguousarray, which turns 0-d scalars into shape (1,)
    return _NP_TO_ST[arr.dtype], arr.astype(arr.dtype.newbyteorder("<"), copy=False).copy(order="C")


def save_file(tensors: Mapping[str, object], path: str, metadata: Optional[Mapping[str, str]] = None,
              bf16: Iterable[str] = ()) -> None:
    """Write name -> numpy array / torch.Tensor to `path` (tensors sorted by name, header padded to 8 bytes).

    Names listed in `bf16` are converted from float32 to BF16 (round-to-nearest-even); torch.bfloat16 tensors are
    written as BF16 as-is. metadata: optional str -> str map stored under `__metadata__`.
    """
    bf16 = set(bf16)
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        tag, arr = _to_numpy_for_save(name, tensors[name])
        if name in bf16:
            if arr.dtype != np.float32:
                raise ValueError(f"[safetensors] tensor '{name}' requested as BF16 must be float32, got {arr.dtype}")
            tag, arr = "BF16", f32_to_bf16_bits(arr)
        b = arr.tobytes()
        header[name] = {"dtype": tag, "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------------------
# shared layers
# --------------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """HF LlamaRMSNorm: y = w * (x * rsqrt(mean(x^2, -1) + eps)), the normalisation computed in fp32. x: (..., C)."""

    def __init__(self, C: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(C))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class Conv1D(nn.Module):
    """GPT-2's Conv1D: a linear layer whose weight is stored (in, out); y = x @ W + b. x: (..., in)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], self.weight.shape[1])


class LoraLinear(nn.Module):
    """A frozen linear layer (nn.Linear or Conv1D) plus LoRA's low-rank term, from PEFT's documented formula:
    y = base(x) + scaling * B(A(x)), A (r, in), B (out, r); scaling = lora_alpha / r (rsLoRA: / sqrt(r))."""

    def __init__(self, base: nn.Module, a: torch.Tensor, b: torch.Tensor, scaling: float):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(a.detach().clone().float())
        self.lora_B = nn.Parameter(b.detach().clone().float())
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * ((x @ self.lora_A.t().to(x.dtype)) @ self.lora_B.t().to(x.dtype))


def add_lora(model: nn.Module, r: int, alpha: float, seed: int = 0) -> Dict[str, nn.Parameter]:
    """Freezes the model and wraps every linear layer but the LM head (PEFT's all-linear) with a LoRA term, A as
    PEFT initialises it (kaiming_uniform, a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), B zero. -> {module: lora_A, ...}."""
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, (nn.Linear, Conv1D)) or name.endswith("lm_head"):
            continue
        n_in, n_out = (mod.in_features, mod.out_features) if isinstance(mod, nn.Linear) else mod.weight.shape
        a = (torch.rand(r, n_in, generator=g) * 2 - 1) / math.sqrt(n_in)
        layer = LoraLinear(mod, a, torch.zeros(n_out, r), alpha / r)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)
        params[name + ".lora_A"], params[name + ".lora_B"] = layer.lora_A, layer.lora_B
    return params


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Eager HF attention. q: (B, H, T, D); k, v: (B, H, T, D) (already repeated for GQA). Softmax in fp32.
    Masked scores get the dtype's most negative value, as HF does. Returns (B, H, T, D)."""
    T = q.shape[-2]
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, T, T)
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


def _act(name: str):
    """HF ACT2FN subset used by Llama / GPT-2 configs."""
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    if name == "gelu":
        return F.gelu
    if name in ("silu", "swish"):
        return F.silu
    if name == "relu":
        return F.relu
    raise ValueError(f"[torch_model] activation '{name}' is not supported; use one of gelu_new, gelu_pytorch_tanh, gelu, silu, relu")


# --------------------------------------------------------------------------------------------------------------
# Llama
# --------------------------------------------------------------------------------------------------------------


def rope_inv_freq(cfg: dict, D: int, T: int) -> Tuple[torch.Tensor, float]:
    """HF ROPE_INIT_FUNCTIONS: returns (inv_freq (D/2,) fp32, attention_scaling) for a sequence of length T.

    default:  inv_freq[i] = 1 / theta^(2i/D)
    linear:   inv_freq / factor  (== positions / factor)
    dynamic:  when T > max_position_embeddings, theta' = theta * (factor*T/max_pos - (factor-1))^(D/(D-2))
    llama3:   wavelengths above original_max/low_freq_factor divided by factor, below original_max/high_freq_factor
              kept, smooth interpolation between.
    """
    theta = float(cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"

    def base_inv(base: float) -> torch.Tensor:
        return 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))

    if kind == "default":
        return base_inv(theta), 1.0
    factor = float(scaling["factor"])
    if kind == "linear":
        return base_inv(theta) / factor, 1.0
    if kind == "dynamic":
        max_pos = int(cfg.get("max_position_embeddings", 2048))
        if T > max_pos:
            theta = theta * ((factor * T / max_pos) - (factor - 1)) ** (D / (D - 2))
        return base_inv(theta), 1.0
    if kind == "llama3":
        inv = base_inv(theta)
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old = float(scaling["original_max_position_embeddings"])
        low_wl, high_wl = old / low, old / high
        wavelen = 2 * math.pi / inv
        inv_l = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
        return torch.where(medium, smoothed, inv_l), 1.0
    raise ValueError(f"[rope] rope_scaling type '{kind}' is not supported; use linear, dynamic or llama3 (or omit rope_scaling)")


def rope_cos_sin(inv_freq: torch.Tensor, T: int, scaling: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (T, D): positions 0..T-1 times inv_freq in fp32, duplicated halves as HF does."""
    pos = torch.arange(T, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq.float())  # (T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
    return emb.cos() * scaling, emb.sin() * scaling


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dim's halves."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (T, D). Rotate-half RoPE (HF layout, i.e. Meta weights after the q/k permutation)."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class LlamaAttention(nn.Module):
    """q_proj (H*D, C), k_proj/v_proj (K*D, C), o_proj (C, H*D); head h reads kv head h // (H/K)."""

    def __init__(self, cfg: dict):
        super().__init__()
        C, H = cfg["hidden_size"], cfg["num_attention_heads"]
        K = cfg.get("num_key_value_heads") or H
        D = cfg.get("head_dim") or C // H
        if H % K:
            raise ValueError(f"[llama] num_attention_heads={H} must be a multiple of num_key_value_heads={K}")
        bias = bool(cfg.get("attention_bias", False))
        self.H, self.K, self.D = H, K, D
        self.q_proj = nn.Linear(C, H * D, bias=bias)
        self.k_proj = nn.Linear(C, K * D, bias=bias)
        self.v_proj = nn.Linear(C, K * D, bias=bias)
        self.o_proj = nn.Linear(H * D, C, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.K, self.D).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, self.K, self.D).transpose(1, 2)  # (B, K, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = self.H // self.K
        if rep > 1:  # HF repeat_kv: (B, K, T, D) -> (B, K*rep, T, D), kv head j serves heads j*rep .. j*rep+rep-1
            k = k[:, :, None].expand(B, self.K, rep, T, self.D).reshape(B, self.H, T, self.D)
            v = v[:, :, None].expand(B, self.K, rep, T, self.D).reshape(B, self.H, T, self.D)
        y = causal_attention(q, k, v, self.D ** -0.5)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.H * self.D))


class LlamaMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x)); gate/up (F, C), down (C, F)."""

    def __init__(self, cfg: dict):
        super().__init__()
        C, Fd = cfg["hidden_size"], cfg["intermediate_size"]
        bias = bool(cfg.get("mlp_bias", False))
        self.gate_proj = nn.Linear(C, Fd, bias=bias)
        self.up_proj = nn.Linear(C, Fd, bias=bias)
        self.down_proj = nn.Linear(Fd, C, bias=bias)
        self.act = _act(cfg.get("hidden_act", "silu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class MixtralExpert(nn.Module):
    """One Mixtral expert: w2(silu(w1(x)) * w3(x)); w1/w3 (F, C), w2 (C, F)."""

    def __init__(self, cfg: dict):
        super().__init__()
        C, Fd = cfg["hidden_size"], cfg["intermediate_size"]
        self.w1 = nn.Linear(C, Fd, bias=False)
        self.w2 = nn.Linear(Fd, C, bias=False)
        self.w3 = nn.Linear(C, Fd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MixtralSparseMoeBlock(nn.Module):
    """Mixtral's MoE MLP, from its published semantics: router logits = gate(x) (E); softmax; the top-k experts;
    their probabilities renormalised to sum to 1; output = sum over the k of weight * expert(x). The router
    logits of the last forward are kept (self.router_logits, (N, E)) for the auxiliary losses.
    moe_capacity_factor > 0 (kiln / Megatron): expert e keeps its first ceil(cf * N * k / E) tokens in token
    order; the (token, expert) pairs over that are dropped (their term is left out, the other weights unchanged)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.E = int(cfg.get("num_local_experts", 8))
        self.k = int(cfg.get("num_experts_per_tok", 2))
        self.capacity_factor = float(cfg.get("moe_capacity_factor", 0) or 0)
        self.gate = nn.Linear(cfg["hidden_size"], self.E, bias=False)
        self.experts = nn.ModuleList(MixtralExpert(cfg) for _ in range(self.E))
        self.router_logits = None
        self.dropped = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        h = x.reshape(-1, shape[-1])  # (N, C)
        N = h.shape[0]
        logits = self.gate(h)  # (N, E)
        self.router_logits = logits
        probs = F.softmax(logits.float(), dim=-1)
        weights, chosen = torch.topk(probs, self.k, dim=-1)  # (N, k)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        keep = torch.ones_like(chosen, dtype=torch.bool)
        if self.capacity_factor > 0:
            cap = min(math.ceil(self.capacity_factor * N * self.k / self.E), N * self.k)
            seen = [0] * self.E
            for t in range(N):
                for j in range(self.k):
                    e = int(chosen[t, j])
                    keep[t, j] = seen[e] < cap
                    seen[e] += 1
        self.dropped = int((~keep).sum())
        out = torch.zeros_like(h)
        for e in range(self.E):
            t, j = torch.nonzero((chosen == e) & keep, as_tuple=True)
            if t.numel() == 0:
                continue
            y = self.experts[e](h[t]) * weights[t, j].unsqueeze(-1).to(h.dtype)
            out = out.index_add(0, t, y)
        return out.reshape(shape)


def moe_aux_losses(model: nn.Module):
    """(aux, z) over every MoE layer's last router logits, pooled as HF's load_balancing_loss_func pools them:
    aux = E * sum_e (tokens whose top-k holds e / L*N) * (mean router probability of e); z = mean logsumexp^2.
    None when the model has no MoE layer."""
    logits = [m.router_logits for m in model.modules() if isinstance(m, MixtralSparseMoeBlock)]
    if not logits:
        return None
    blocks = [m for m in model.modules() if isinstance(m, MixtralSparseMoeBlock)]
    E, k = blocks[0].E, blocks[0].k
    z_all = torch.cat(logits, dim=0)  # (L*N, E)
    probs = F.softmax(z_all.float(), dim=-1)
    _, chosen = torch.topk(probs, k, dim=-1)
    mask = F.one_hot(chosen, E).float()  # (L*N, k, E)
    tokens_per_expert = mask.mean(dim=0)  # (k, E)
    prob_per_expert = probs.mean(dim=0)  # (E)
    aux = (tokens_per_expert * prob_per_expert.unsqueeze(0)).sum() * E
    z = (torch.logsumexp(z_all.float(), dim=-1) ** 2).mean()
    return aux, z


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        eps = float(cfg.get("rms_norm_eps", 1e-6))
        self.self_attn = LlamaAttention(cfg)
        self.moe = architecture(cfg) == "mixtral"
        if self.moe:
            self.block_sparse_moe = MixtralSparseMoeBlock(cfg)
        else:
            self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], eps)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        mlp = self.block_sparse_moe if self.moe else self.mlp
        return x + mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])  # (V, C)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], float(cfg.get("rms_norm_eps", 1e-6)))


class LlamaForCausalLM(nn.Module):
    """HF LlamaForCausalLM (eager attention, no dropout, no KV cache). forward(idx (B, T) int) -> logits (B, T, V) fp32."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.config = dict(cfg)
        self.tied = bool(cfg.get("tie_word_embeddings", False))
        self.model = LlamaModel(cfg)
        if not self.tied:
            self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)  # (V, C)
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]

    def lm_head_weight(self) -> torch.Tensor:
        """(V, C); the embedding itself when tied."""
        return self.model.embed_tokens.weight if self.tied else self.lm_head.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        inv_freq, att_scale = rope_inv_freq(self.config, self.head_dim, T)
        cos, sin = rope_cos_sin(inv_freq, T, att_scale)
        x = self.model.embed_tokens(idx)  # (B, T, C)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        x = self.model.norm(x)
        return F.linear(x, self.lm_head_weight()).float()  # (B, T, V)


# --------------------------------------------------------------------------------------------------------------
# GPT-2
# --------------------------------------------------------------------------------------------------------------


class GPT2Attention(nn.Module):
    """c_attn (C, 3C) Conv1D -> q, k, v; c_proj (C, C). Scores scaled by 1/sqrt(D) (scale_attn_weights) and by
    1/(layer+1) when scale_attn_by_inverse_layer_idx."""

    def __init__(self, cfg: dict, layer_idx: int):
        super().__init__()
        C, H = cfg["n_embd"], cfg["n_head"]
        if C % H:
            raise ValueError(f"[gpt2] n_embd={C} must be a multiple of n_head={H}")
        self.H, self.D = H, C // H
        self.c_attn = Conv1D(C, 3 * C)
        self.c_proj = Conv1D(C, C)
        scale = self.D ** -0.5 if cfg.get("scale_attn_weights", True) else 1.0
        if cfg.get("scale_attn_by_inverse_layer_idx", False):
            scale /= float(layer_idx + 1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, self.D).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = causal_attention(q, k, v, self.scale)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class GPT2MLP(nn.Module):
    """c_fc (C, F) -> act -> c_proj (F, C)."""

    def __init__(self, cfg: dict):
        super().__init__()
        C = cfg["n_embd"]
        Fd = cfg.get("n_inner") or 4 * C
        self.c_fc = Conv1D(C, Fd)
        self.c_proj = Conv1D(Fd, C)
        self.act = _act(cfg.get("activation_function", "gelu_new"))

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, cfg: dict, layer_idx: int):
        super().__init__()
        C, eps = cfg["n_embd"], float(cfg.get("layer_norm_epsilon", 1e-5))
        self.ln_1 = nn.LayerNorm(C, eps=eps)
        self.attn = GPT2Attention(cfg, layer_idx)
        self.ln_2 = nn.LayerNorm(C, eps=eps)
        self.mlp = GPT2MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.wte = nn.Embedding(cfg["vocab_size"], cfg["n_embd"])  # (V, C)
        self.wpe = nn.Embedding(cfg["n_positions"], cfg["n_embd"])  # (n_positions, C)
        self.h = nn.ModuleList(GPT2Block(cfg, i) for i in range(cfg["n_layer"]))
        self.ln_f = nn.LayerNorm(cfg["n_embd"], eps=float(cfg.get("layer_norm_epsilon", 1e-5)))


class GPT2LMHeadModel(nn.Module):
    """HF GPT2LMHeadModel (no dropout, no KV cache). forward(idx (B, T) int) -> logits (B, T, V) fp32."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.config = dict(cfg)
        self.tied = bool(cfg.get("tie_word_embeddings", True))
        self.transformer = GPT2Model(cfg)
        if not self.tied:
            self.lm_head = nn.Linear(cfg["n_embd"], cfg["vocab_size"], bias=False)

    def lm_head_weight(self) -> torch.Tensor:
        return self.transformer.wte.weight if self.tied else self.lm_head.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if T > self.config["n_positions"]:
            raise ValueError(f"[gpt2] sequence length {T} exceeds n_positions={self.config['n_positions']}")
        tr = self.transformer
        x = tr.wte(idx) + tr.wpe(torch.arange(T, device=idx.device))[None]  # (B, T, C)
        for block in tr.h:
            x = block(x)
        return F.linear(tr.ln_f(x), self.lm_head_weight()).float()


# --------------------------------------------------------------------------------------------------------------
# config / build / checkpoints
# --------------------------------------------------------------------------------------------------------------

_REQUIRED = {
    "llama": ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"],
    "gpt2": ["vocab_size", "n_embd", "n_layer", "n_head", "n_positions"],
}
_REQUIRED["mixtral"] = _REQUIRED["llama"]
EMBEDDING_NAMES = ("embed_tokens", "wte", "wpe")


def architecture(cfg: dict) -> str:
    """'llama', 'mixtral' or 'gpt2' from `architectures` (preferred) or `model_type`; ValueError otherwise."""
    archs = cfg.get("architectures") or []
    if "LlamaForCausalLM" in archs:
        return "llama"
    if "MixtralForCausalLM" in archs:
        return "mixtral"
    if "GPT2LMHeadModel" in archs:
        return "gpt2"
    if not archs and cfg.get("model_type") in ("llama", "mixtral", "gpt2"):
        return cfg["model_type"]
    raise ValueError(f"[torch_model] unsupported architecture (architectures={archs}, model_type={cfg.get('model_type')!r}); "
                     "supported: LlamaForCausalLM, MixtralForCausalLM, GPT2LMHeadModel")


def build_model(cfg: dict) -> nn.Module:
    """config.json dict -> uninitialised-but-valid fp32 model (call init_weights or load a state dict)."""
    arch = architecture(cfg)
    missing = [k for k in _REQUIRED[arch] if k not in cfg]
    if missing:
        raise ValueError(f"[torch_model] {arch} config is missing keys {missing}")
    if arch in ("llama", "mixtral"):
        model = LlamaForCausalLM(cfg)  # pretraining_tp only reorders HF's matmuls; the math is the same
    else:
        if cfg.get("add_cross_attention"):
            raise ValueError("[gpt2] add_cross_attention=true is not supported")
        model = GPT2LMHeadModel(cfg)
    init_weights(model, seed=0)
    return model


@torch.no_grad()
def init_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """HF _init_weights: Linear/Conv1D/Embedding ~ N(0, initializer_range) (default 0.02), biases 0, norms 1;
    GPT-2 also scales every c_proj weight by 1/sqrt(2*n_layer). Deterministic for a given seed."""
    g = torch.Generator().manual_seed(seed)
    std = float(model.config.get("initializer_range", 0.02))
    gpt2 = isinstance(model, GPT2LMHeadModel)
    for name, p in model.named_parameters():
        if p.ndim == 1:  # norm weights / biases
            p.fill_(0.0 if name.endswith("bias") else 1.0)
        else:
            s = std
            if gpt2 and name.endswith("c_proj.weight"):
                s = std / math.sqrt(2 * model.config["n_layer"])
            p.copy_(torch.randn(p.shape, generator=g) * s)
    return model


def load_config(ckpt_dir: str) -> dict:
    path = os.path.join(ckpt_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"[checkpoint] no config.json in '{ckpt_dir}'")
    with open(path) as f:
        return json.load(f)


def load_checkpoint(ckpt_dir: str) -> nn.Module:
    """HF checkpoint directory (config.json + model.safetensors) -> fp32 model, loaded with strict=True.

    Tolerates what HF/hub files carry besides parameters: GPT-2 `attn.bias`/`attn.masked_bias` mask buffers and a
    missing `transformer.` prefix; an `lm_head.weight` duplicate of tied embeddings (must equal the embedding)."""
    cfg = load_config(ckpt_dir)
    model = build_model(cfg)
    st = os.path.join(ckpt_dir, "model.safetensors")
    if not os.path.isfile(st):
        raise FileNotFoundError(f"[checkpoint] no model.safetensors in '{ckpt_dir}' (sharded checkpoints are not supported)")
    tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in load_file(st).items()}
    if isinstance(model, GPT2LMHeadModel):
        fixed = {}
        for k, v in tensors.items():
            if k.endswith(".attn.bias") and v.ndim == 4 or k.endswith(".attn.masked_bias"):
                continue
            if not k.startswith("transformer.") and k != "lm_head.weight":
                k = "transformer." + k
            fixed[k] = v
        tensors = fixed
    emb = "model.embed_tokens.weight" if isinstance(model, LlamaForCausalLM) else "transformer.wte.weight"
    if model.tied and "lm_head.weight" in tensors:
        if emb in tensors and not torch.equal(tensors["lm_head.weight"], tensors[emb]):
            raise ValueError(f"[checkpoint] '{ckpt_dir}' has tie_word_embeddings but lm_head.weight differs from {emb}")
        del tensors["lm_head.weight"]
    expected = model.state_dict()
    for k, v in tensors.items():
        if k in expected and tuple(expected[k].shape) != tuple(v.shape):
            raise ValueError(f"[checkpoint] tensor '{k}' has shape {tuple(v.shape)} but config.json implies {tuple(expected[k].shape)}")
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"[checkpoint] '{st}' does not match config.json: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                         f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    model.load_state_dict(tensors, strict=True)
    return model


def save_checkpoint(model: nn.Module, ckpt_dir: str, bf16: bool = False) -> None:
    """Write config.json + model.safetensors (HF names; F32, or BF16 when bf16)."""
    os.makedirs(ckpt_dir, exist_ok=True)
    with open(os.path.join(ckpt_dir, "config.json"), "w") as f:
        json.dump(model.config, f, indent=2)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(ckpt_dir, "model.safetensors"), metadata={"format": "pt"}, bf16=sd.keys() if bf16 else ())


def weight_decay_groups(model: nn.Module, weight_decay: float):
    """AdamW param groups: decay only 2-D params that are not embeddings (embed_tokens, wte, wpe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        is_emb = any(f".{e}." in f".{name}" for e in EMBEDDING_NAMES)
        (decay if p.ndim == 2 and not is_emb else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def model_loss(model: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The training loss: lm_loss, plus for a Mixtral model router_aux_loss_coef * aux when output_router_logits
    (as HF's MixtralForCausalLM adds it) and router_z_loss_coef * z (kiln's key)."""
    loss = lm_loss(logits, targets)
    moe = moe_aux_losses(model)
    if moe is not None:
        aux, z = moe
        if model.config.get("output_router_logits", False):
            loss = loss + float(model.config.get("router_aux_loss_coef", 0.001)) * aux
        zc = float(model.config.get("router_z_loss_coef", 0) or 0)
        if zc > 0:
            loss = loss + zc * z
    return loss


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over targets != -1. logits (B, T, V), targets (B, T)."""
    if not bool((targets != -1).any()):
        raise ValueError("[loss] every target is -1 (ignored): the mean loss is undefined")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1).long(), ignore_index=-1)


# --------------------------------------------------------------------------------------------------------------
# CLI: fixtures for parity tests
# --------------------------------------------------------------------------------------------------------------


def _main(argv=None) -> None:
    """init:  random HF-initialised checkpoint dir from a config.json.
    batch: random `input_ids` I32 (B, T+1) safetensors for tests/parity/torch_reference.py."""
    import argparse

    p = argparse.ArgumentParser(prog="torch_model.py", description="fixtures for kiln's PyTorch parity tests")
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("init", help="write config.json + model.safetensors with seeded HF init")
    pi.add_argument("--config", required=True)
    pi.add_argument("--out", required=True, help="checkpoint directory to create")
    pi.add_argument("--seed", type=int, default=0)
    pi.add_argument("--bf16", action="store_true", help="store weights as BF16")
    pb = sub.add_parser("batch", help="write input_ids I32 (B, T+1) of uniform random tokens")
    pb.add_argument("--vocab", type=int, required=True)
    pb.add_argument("--B", type=int, required=True)
    pb.add_argument("--T", type=int, required=True, help="sequence length; the tensor has T+1 columns")
    pb.add_argument("--seed", type=int, default=0)
    pb.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.cmd == "init":
        with open(a.config) as f:
            model = init_weights(build_model(json.load(f)), a.seed)
        save_checkpoint(model, a.out, bf16=a.bf16)
        print(f"torch_model init: {architecture(model.config)} {sum(t.numel() for t in model.parameters())} params -> {a.out}")
    else:
        ids = np.random.default_rng(a.seed).integers(0, a.vocab, (a.B, a.T + 1)).astype(np.int32)
        save_file({"input_ids": ids}, a.out)
        print(f"torch_model batch: input_ids I32 {list(ids.shape)} -> {a.out}")


if __name__ == "__main__":
    _main()

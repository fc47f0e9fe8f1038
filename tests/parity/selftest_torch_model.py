#!/usr/bin/python3
"""Self-test of scripts/torch_model.py (the PyTorch oracle) against computations that do not share its code.

Run: /usr/bin/python3 tests/parity/selftest_torch_model.py      (prints one line per check, exits 1 on failure)

Checks: an independent float64 numpy forward of Llama and GPT-2 from the state dict; RoPE rotate-half after HF's
q/k permutation == Meta's complex-number RoPE on the unpermuted weights; RoPE scaling formulas (linear, dynamic,
llama3); causal masking; GQA with K=H == MHA with repeated kv weights; tied embeddings share storage and sum both
gradients; loss ignores -1 targets; safetensors round trip for every dtype + truncation error; torch_reference.py
end to end (keys, shapes, loss, one AdamW step recomputed by hand in numpy incl. decay groups and clipping).
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import torch_model as tm  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)

LLAMA = json.load(open(os.path.join(ROOT, "configs/models/llama-tiny.json")))
GPT2 = json.load(open(os.path.join(ROOT, "configs/models/gpt2-tiny.json")))
FAILED = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name}{(': ' + detail) if detail else ''}")
    if not ok:
        FAILED.append(name)


def maxdiff(a, b):
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def randomize(model, seed=1, scale=0.3):
    """Give every parameter (norm weights and biases too) non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            base = 1.0 if (p.ndim == 1 and not n.endswith("bias")) else 0.0
            p.copy_(base + torch.randn(p.shape, generator=g) * (scale if p.ndim == 1 else 0.08))
    return model


# ---------------------------------------------------------------- independent numpy references (float64)


def np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def np_causal_attn(q, k, v, scale):
    """q, k, v: (H, T, D) -> (H, T, D)."""
    T = q.shape[1]
    s = q @ k.transpose(0, 2, 1) * scale
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    return np_softmax(s) @ v


def np_llama(cfg, sd, idx):
    """Llama forward written from the paper/HF docs: per-head loop, explicit kv-head index, per-pair rotation."""
    W = {k: v.detach().double().numpy() for k, v in sd.items()}
    C, H, K = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D, eps, theta = C // H, cfg["rms_norm_eps"], cfg["rope_theta"]
    T = len(idx)

    def rms(x, w):
        return w * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)

    def rope(x):  # x: (T, D) in HF layout: element i pairs with element i + D/2
        out = np.empty_like(x)
        for i in range(D // 2):
            f = theta ** (-2.0 * i / D)
            for t in range(T):
                c, s = math.cos(t * f), math.sin(t * f)
                a, b = x[t, i], x[t, i + D // 2]
                out[t, i], out[t, i + D // 2] = a * c - b * s, a * s + b * c
        return out

    x = W["model.embed_tokens.weight"][idx]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = h @ W[p + "self_attn.q_proj.weight"].T
        k = h @ W[p + "self_attn.k_proj.weight"].T
        v = h @ W[p + "self_attn.v_proj.weight"].T
        heads = []
        for hh in range(H):
            kv = hh // (H // K)
            qh = rope(q[:, hh * D:(hh + 1) * D])
            kh = rope(k[:, kv * D:(kv + 1) * D])
            heads.append(np_causal_attn(qh[None], kh[None], v[None, :, kv * D:(kv + 1) * D], 1 / math.sqrt(D))[0])
        x = x + np.concatenate(heads, -1) @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        g = h @ W[p + "mlp.gate_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
    x = rms(x, W["model.norm.weight"])
    head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    return x @ head.T


def np_gpt2(cfg, sd, idx):
    W = {k: v.detach().double().numpy() for k, v in sd.items()}
    C, H, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
    D, T = C // H, len(idx)

    def ln(x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w + b

    def gelu_new(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    x = W["transformer.wte.weight"][idx] + W["transformer.wpe.weight"][:T]
    for l in range(cfg["n_layer"]):
        p = f"transformer.h.{l}."
        h = ln(x, W[p + "ln_1.weight"], W[p + "ln_1.bias"])
        qkv = h @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]  # Conv1D: x @ (in, out)
        q, k, v = (qkv[:, i * C:(i + 1) * C].reshape(T, H, D).transpose(1, 0, 2) for i in range(3))
        y = np_causal_attn(q, k, v, 1 / math.sqrt(D)).transpose(1, 0, 2).reshape(T, C)
        x = x + y @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
        h = ln(x, W[p + "ln_2.weight"], W[p + "ln_2.bias"])
        x = x + gelu_new(h @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"]) @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
    x = ln(x, W["transformer.ln_f.weight"], W["transformer.ln_f.bias"])
    return x @ W["transformer.wte.weight"].T


def test_numpy_reference():
    idx = torch.randint(0, 512, (2, 13))
    for name, cfg, ref in (("llama", LLAMA, np_llama), ("gpt2", GPT2, np_gpt2)):
        m = randomize(tm.build_model(cfg))
        with torch.no_grad():
            got = m(idx).numpy()
        d = max(maxdiff(got[b], ref(cfg, m.state_dict(), idx[b].numpy())) for b in range(2))
        check(f"{name} forward == independent float64 numpy forward", d < 1e-4, f"max|diff|={d:.2e}")
    cfg = dict(LLAMA, tie_word_embeddings=True)
    m = randomize(tm.build_model(cfg))
    with torch.no_grad():
        d = maxdiff(m(idx[:1]).numpy()[0], np_llama(cfg, m.state_dict(), idx[0].numpy()))
    check("llama tied forward == numpy forward", d < 1e-4, f"max|diff|={d:.2e}")


# ---------------------------------------------------------------- RoPE


def test_rope_meta_equivalence():
    """Meta's llama rotates interleaved pairs (x[2i], x[2i+1]) as complex numbers; HF permutes wq/wk rows
    (convert_llama_weights_to_hf.permute) and rotates halves. Attention scores must be identical."""
    H, D, C, T, theta = 4, 16, 64, 11, 10000.0
    g = torch.Generator().manual_seed(3)
    wq, wk, x = torch.randn(H * D, C, generator=g), torch.randn(H * D, C, generator=g), torch.randn(T, C, generator=g)

    def hf_permute(w):
        return w.view(H, D // 2, 2, C).transpose(1, 2).reshape(H * D, C)

    freqs = 1.0 / theta ** (torch.arange(0, D, 2)[: D // 2].float() / D)
    cis = torch.polar(torch.ones(T, D // 2), torch.outer(torch.arange(T).float(), freqs))  # (T, D/2)

    def meta(w):
        y = (x @ w.T).view(T, H, D // 2, 2)
        y = torch.view_as_real(torch.view_as_complex(y.contiguous()) * cis[:, None]).reshape(T, H, D)
        return y.transpose(0, 1)  # (H, T, D)

    cos, sin = tm.rope_cos_sin(tm.rope_inv_freq({"rope_theta": theta}, D, T)[0], T)

    def hf(w):
        return tm.apply_rope((x @ hf_permute(w).T).view(1, T, H, D).transpose(1, 2), cos, sin)[0]

    qm, km, qh, kh = meta(wq), meta(wk), hf(wq), hf(wk)
    d_layout = maxdiff(torch.cat([qm[..., 0::2], qm[..., 1::2]], -1), qh)
    d_scores = maxdiff(qm @ km.transpose(-1, -2), qh @ kh.transpose(-1, -2))
    check("RoPE rotate-half (HF permuted) == complex RoPE (Meta), per element", d_layout < 1e-4, f"{d_layout:.2e}")
    check("RoPE rotate-half (HF permuted) == complex RoPE (Meta), attention scores", d_scores < 1e-3, f"{d_scores:.2e}")
    # relative-position property: <rope(q, m), rope(k, n)> depends only on m - n
    q1, k1 = torch.randn(D, generator=g), torch.randn(D, generator=g)
    c2, s2 = tm.rope_cos_sin(tm.rope_inv_freq({}, D, 40)[0], 40)
    r = lambda v, t: v * c2[t] + tm.rotate_half(v) * s2[t]
    d_rel = abs(float(r(q1, 7) @ r(k1, 3)) - float(r(q1, 30) @ r(k1, 26)))
    check("RoPE scores depend only on relative position", d_rel < 1e-4, f"{d_rel:.2e}")


def test_rope_scaling():
    D = 32
    base = tm.rope_inv_freq({"rope_theta": 500000.0}, D, 10)[0]
    lin = tm.rope_inv_freq({"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 4.0}}, D, 10)[0]
    check("RoPE linear == inv_freq / factor", maxdiff(lin, base / 4) < 1e-12)
    dyn_cfg = {"rope_theta": 10000.0, "max_position_embeddings": 64, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}
    short = tm.rope_inv_freq(dyn_cfg, D, 64)[0]
    long = tm.rope_inv_freq(dyn_cfg, D, 128)[0]
    theta2 = 10000.0 * (2.0 * 128 / 64 - 1.0) ** (D / (D - 2))
    want = np.array([theta2 ** (-2 * i / D) for i in range(D // 2)])
    check("RoPE dynamic == default when T <= max_position_embeddings", maxdiff(short, tm.rope_inv_freq({}, D, 64)[0]) < 1e-12)
    check("RoPE dynamic NTK base for T > max_position_embeddings", maxdiff(long, want) / want.max() < 1e-5)
    sc = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    l3 = tm.rope_inv_freq({"rope_theta": 500000.0, "rope_scaling": sc}, 128, 10)[0].double().numpy()
    b = tm.rope_inv_freq({"rope_theta": 500000.0}, 128, 10)[0].double().numpy()
    ok = True
    for i in range(64):  # Meta's llama3 apply_scaling, written per element in float64
        wl = 2 * math.pi / b[i]
        if wl < 8192 / 4.0:
            w = b[i]
        elif wl > 8192 / 1.0:
            w = b[i] / 8.0
        else:
            s = (8192 / wl - 1.0) / (4.0 - 1.0)
            w = (1 - s) * b[i] / 8.0 + s * b[i]
        ok &= abs(w - l3[i]) <= 1e-6 * b[i]
    check("RoPE llama3 scaling == Meta apply_scaling (per frequency)", ok)
    try:
        tm.rope_inv_freq({"rope_scaling": {"type": "yarn", "factor": 2.0}}, D, 4)
        check("RoPE unknown scaling type raises", False)
    except ValueError as e:
        check("RoPE unknown scaling type raises", "yarn" in str(e), str(e))


# ---------------------------------------------------------------- structure


def test_causal():
    for name, cfg in (("llama", LLAMA), ("gpt2", GPT2)):
        m = randomize(tm.build_model(cfg))
        a = torch.randint(0, 512, (1, 20))
        b = a.clone()
        b[0, 12:] = (b[0, 12:] + 7) % 512
        with torch.no_grad():
            la, lb = m(a), m(b)
        d_before, d_after = maxdiff(la[0, :12], lb[0, :12]), maxdiff(la[0, 12:], lb[0, 12:])
        check(f"{name} causal: changing tokens >= 12 leaves logits < 12 unchanged", d_before == 0.0 and d_after > 1e-3,
              f"before {d_before:.1e}, after {d_after:.1e}")


def test_gqa_equals_mha():
    gqa = randomize(tm.build_model(LLAMA))  # H=4, K=2
    mha_cfg = dict(LLAMA, num_key_value_heads=LLAMA["num_attention_heads"])
    mha = tm.build_model(mha_cfg)
    H, K = LLAMA["num_attention_heads"], LLAMA["num_key_value_heads"]
    D = LLAMA["hidden_size"] // H
    sd = gqa.state_dict()
    new = {}
    for k, v in sd.items():
        if k.endswith(("k_proj.weight", "v_proj.weight")):  # (K*D, C) -> (H*D, C): head h gets kv head h // (H/K)
            v = v.view(K, 1, D, -1).expand(K, H // K, D, v.shape[-1]).reshape(H * D, -1)
        new[k] = v
    mha.load_state_dict(new, strict=True)
    idx = torch.randint(0, 512, (2, 17))
    with torch.no_grad():
        d = maxdiff(gqa(idx), mha(idx))
    check("GQA (K=2) == MHA (K=H) with repeated k/v weights", d < 1e-5, f"{d:.2e}")


def test_tied():
    cfg = dict(LLAMA, tie_word_embeddings=True)
    m = randomize(tm.build_model(cfg))
    names = [n for n, _ in m.named_parameters()]
    check("tied llama has no lm_head.weight parameter", "lm_head.weight" not in names and "lm_head.weight" not in m.state_dict())
    check("tied llama head shares embedding storage", m.lm_head_weight().data_ptr() == m.model.embed_tokens.weight.data_ptr())
    g2 = tm.build_model(GPT2)
    check("gpt2 head shares wte storage", g2.lm_head_weight().data_ptr() == g2.transformer.wte.weight.data_ptr())
    # gradient of the shared matrix == embedding-use gradient + head-use gradient (computed with an untied copy)
    untied = tm.build_model(dict(cfg, tie_word_embeddings=False))
    sd = dict(m.state_dict())
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    untied.load_state_dict(sd, strict=True)
    idx, tgt = torch.randint(0, 512, (2, 9)), torch.randint(0, 512, (2, 9))
    tm.lm_loss(m(idx), tgt).backward()
    tm.lm_loss(untied(idx), tgt).backward()
    want = untied.model.embed_tokens.weight.grad + untied.lm_head.weight.grad
    d = maxdiff(m.model.embed_tokens.weight.grad, want)
    check("tied grad == embedding grad + head grad", d < 1e-6, f"{d:.2e}")


def test_loss_ignore():
    logits = torch.randn(2, 5, 11)
    tgt = torch.tensor([[1, -1, 3, 4, -1], [-1, -1, 10, 0, 2]])
    got = float(tm.lm_loss(logits, tgt))
    lp = torch.log_softmax(logits.double(), -1)
    terms = [-float(lp[b, t, tgt[b, t]]) for b in range(2) for t in range(5) if tgt[b, t] != -1]
    check("loss == mean CE over targets != -1", abs(got - sum(terms) / len(terms)) < 1e-5)


# ---------------------------------------------------------------- safetensors


def test_safetensors(tmp):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 5)).astype(np.float32)
    t = {"f32": f32, "f16": rng.standard_normal(7).astype(np.float16), "i32": rng.integers(-5, 5, (2, 3), dtype=np.int32),
         "i64": np.array([1, -2 ** 40], dtype=np.int64), "scalar": np.array(3.5, dtype=np.float32),
         "bf": f32, "empty": np.zeros((0, 4), np.float32)}
    p = os.path.join(tmp, "rt.safetensors")
    tm.save_file(t, p, metadata={"k": "v"}, bf16=["bf"])
    back = tm.load_file(p)
    hdr, start = tm.read_header(p)
    ok = all(np.array_equal(back[k], t[k]) and back[k].dtype == t[k].dtype for k in t if k != "bf")
    check("safetensors round trip F32/F16/I32/I64/scalar/empty", ok and start % 8 == 0 and hdr["__metadata__"] == {"k": "v"})
    want_bf = torch.from_numpy(f32).bfloat16().float().numpy()  # torch's own RNE rounding
    check("safetensors BF16 write (RNE) + read == torch .bfloat16()", hdr["bf"]["dtype"] == "BF16" and np.array_equal(back["bf"], want_bf))
    tb = torch.randn(4, 6).bfloat16()
    tm.save_file({"x": tb}, p)
    check("safetensors torch.bfloat16 tensors written as BF16", np.array_equal(tm.load_file(p)["x"], tb.float().numpy())
          and torch.equal(tm.load_file(p, as_torch=True, bf16_to_f32=False)["x"], tb))
    raw = open(p, "rb").read()
    open(p, "wb").write(raw[:-4])
    try:
        tm.load_file(p)
        check("safetensors truncated file raises", False)
    except ValueError as e:
        check("safetensors truncated file raises", "truncated" in str(e), str(e))
    try:
        tm.load_checkpoint(os.path.join(tmp, "nope"))
        check("load_checkpoint missing dir raises FileNotFoundError", False)
    except FileNotFoundError as e:
        check("load_checkpoint missing dir raises FileNotFoundError", True, str(e))
    try:
        tm.build_model({"architectures": ["MistralForCausalLM"]})
        check("unknown architecture raises", False)
    except ValueError as e:
        check("unknown architecture raises", "Mistral" in str(e), str(e))


def test_checkpoint_roundtrip(tmp):
    for name, cfg in (("llama", LLAMA), ("gpt2", GPT2)):
        m = randomize(tm.build_model(cfg))
        d = os.path.join(tmp, name)
        tm.save_checkpoint(m, d)
        names = set(tm.read_header(os.path.join(d, "model.safetensors"))[0]) - {"__metadata__"}
        m2 = tm.load_checkpoint(d)
        same = all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
        check(f"{name} checkpoint save/load (strict, HF names) round trip", same and names == set(m.state_dict()),
              f"{len(names)} tensors")
    want = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight", "transformer.ln_f.bias"}
    check("gpt2 state dict uses HF names, c_attn (C, 3C)", want <= set(tm.build_model(GPT2).state_dict())
          and tuple(tm.build_model(GPT2).transformer.h[0].attn.c_attn.weight.shape) == (64, 192))


# ---------------------------------------------------------------- torch_reference.py end to end


def test_torch_reference(tmp):
    for name, cfg in (("llama", LLAMA), ("gpt2", GPT2)):
        m = randomize(tm.build_model(cfg))
        d = os.path.join(tmp, "ref_" + name)
        tm.save_checkpoint(m, d)
        ids = np.random.default_rng(1).integers(0, 512, (2, 10)).astype(np.int32)
        ids[0, -1] = -1  # ignored target
        ids[1, 4] = -1  # ignored target that is also an input (fed as token 0)
        bp, op = os.path.join(tmp, name + "_batch.safetensors"), os.path.join(tmp, name + "_out.safetensors")
        tm.save_file({"input_ids": ids}, bp)
        args = ["--lr", "1e-2", "--clip", "0.5", "--weight-decay", "0.1"]
        r = subprocess.run([sys.executable, os.path.join(HERE, "torch_reference.py"), "--model", d, "--batch", bp,
                            "--out", op, "--steps", "1"] + args, capture_output=True, text=True)
        if r.returncode != 0:
            check(f"torch_reference {name} runs", False, r.stderr[-500:])
            continue
        o = tm.load_file(op)
        params = dict(m.named_parameters())
        keys_ok = set(o) == {"logits", "loss", "step_losses"} | {"grad." + k for k in params} | {"final." + k for k in params}
        check(f"torch_reference {name} output keys/shapes", keys_ok and o["logits"].shape == (2, 9, 512)
              and o["loss"].shape == () and o["step_losses"].shape == (1,), r.stdout.strip())
        # loss against the numpy forward
        inp = np.maximum(ids[:, :-1], 0)
        logits = np.stack([(np_gpt2 if name == "gpt2" else np_llama)(cfg, m.state_dict(), inp[b]) for b in range(2)])
        tgt = ids[:, 1:]
        lp = logits - logits.max(-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        nll = [-lp[b, t, tgt[b, t]] for b in range(2) for t in range(9) if tgt[b, t] != -1]
        check(f"torch_reference {name} loss == numpy loss, step_losses[0] == loss",
              abs(float(o["loss"]) - np.mean(nll)) < 1e-4 and float(o["step_losses"][0]) == float(o["loss"]))
        # one AdamW step by hand: clip by global norm, decoupled decay on 2-D non-embedding params only
        lr, b1, b2, eps, wd, clip = 1e-2, 0.9, 0.95, 1e-8, 0.1, 0.5
        gn = math.sqrt(sum(float((o["grad." + k].astype(np.float64) ** 2).sum()) for k in params))
        coef = min(1.0, clip / (gn + 1e-6))
        worst = 0.0
        for k, p in params.items():
            w = p.detach().double().numpy()
            g = o["grad." + k].astype(np.float64) * coef
            decay = wd if (p.ndim == 2 and not any(e in k for e in ("embed_tokens", "wte", "wpe"))) else 0.0
            mhat, vhat = (1 - b1) * g / (1 - b1), (1 - b2) * g * g / (1 - b2)
            want = w * (1 - lr * decay) - lr * mhat / (np.sqrt(vhat) + eps)
            worst = max(worst, maxdiff(o["final." + k], want))
        check(f"torch_reference {name} one AdamW step == numpy AdamW (clip {clip}, |g|={gn:.3f})", worst < 1e-5, f"{worst:.2e}")
    r = subprocess.run([sys.executable, os.path.join(HERE, "torch_reference.py"), "--model", os.path.join(tmp, "missing"),
                        "--batch", "x", "--out", "y"], capture_output=True, text=True)
    check("torch_reference missing model -> nonzero exit with a clear error", r.returncode != 0 and "config.json" in r.stderr)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        test_numpy_reference()
        test_rope_meta_equivalence()
        test_rope_scaling()
        test_causal()
        test_gqa_equals_mha()
        test_tied()
        test_loss_ignore()
        test_safetensors(tmp)
        test_checkpoint_roundtrip(tmp)
        test_torch_reference(tmp)
    print(f"selftest_torch_model: {'FAILED ' + ', '.join(FAILED) if FAILED else 'all checks passed'}")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()

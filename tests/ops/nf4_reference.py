#!/usr/bin/env python3
"""NF4 with double quantization, written from QLoRA's paper and bitsandbytes' documented
quantize_4bit(quant_type="nf4", blocksize=64, compress_statistics=True) in plain PyTorch: the
oracle of ops/nf4.h (tests/ops/test_nf4.cpp).

  nf4_reference.py IN.f32 OUT_PREFIX

reads IN.f32 (raw little-endian fp32, a multiple of 64 values) and writes OUT_PREFIX.codes (the
packed 4-bit codes, first value in the high nibble), .scale_codes (uint8 per block of 64),
.nested_absmax (fp32 per 256 blocks), .offset (fp32), .dequant (fp32) and .map (the dynamic map).
"""
import sys

import torch

NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=torch.float32)


def create_dynamic_map(max_exponent_bits=7, total_bits=8):
    """bitsandbytes' signed dynamic 8-bit map (Dettmers 2015): per exponent, linear fractions."""
    data = []
    non_sign_bits = total_bits - 1
    for i in range(max_exponent_bits):
        items = 2 ** (i + non_sign_bits - max_exponent_bits) + 1
        boundaries = torch.linspace(0.1, 1, items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        data += ((-(10 ** (-(max_exponent_bits - 1) + i))) * means).tolist()
    data.append(0)
    data.append(1.0)
    assert len(data) == 2 ** total_bits
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def blockwise(x, block, levels):
    """Nearest level to x / absmax per block (ties: the lower index); absmax 0 codes as 0.0."""
    n = x.numel()
    pad = (-n) % block
    xp = torch.cat([x, torch.zeros(pad)]).view(-1, block)
    absmax = xp.abs().max(dim=1).values
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    scaled = xp / safe[:, None]
    codes = (scaled.unsqueeze(-1) - levels).abs().argmin(dim=-1)
    zero = (levels.abs()).argmin()
    codes = torch.where(absmax[:, None] > 0, codes, zero)
    return codes.reshape(-1)[:n], absmax


def main():
    x = torch.from_numpy(__import__("numpy").fromfile(sys.argv[1], dtype="<f4")).float()
    out = sys.argv[2]
    codes, absmax = blockwise(x, 64, NF4)
    packed = (codes[0::2] << 4 | codes[1::2]).to(torch.uint8)
    offset = absmax.double().mean().float()
    dmap = create_dynamic_map()
    scale_codes, nested = blockwise(absmax - offset, 256, dmap)
    # Dequantize: the absmax from its code, then each value's level times it.
    block_absmax = dmap[scale_codes] * nested.repeat_interleave(256)[: absmax.numel()]
    block_absmax = block_absmax + offset
    deq = (NF4[codes].view(-1, 64) * block_absmax[:, None]).reshape(-1)
    packed.numpy().tofile(out + ".codes")
    scale_codes.to(torch.uint8).numpy().tofile(out + ".scale_codes")
    nested.numpy().astype("<f4").tofile(out + ".nested_absmax")
    offset.reshape(1).numpy().astype("<f4").tofile(out + ".offset")
    deq.numpy().astype("<f4").tofile(out + ".dequant")
    dmap.numpy().astype("<f4").tofile(out + ".map")


if __name__ == "__main__":
    main()

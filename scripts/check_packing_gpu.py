#!/usr/bin/env python
"""Packed against padded loss on a real-size, randomly initialised Qwen2-VL-2B with FlashAttention-2
(D31): the check CI (CPU, SDPA) cannot run. No download: the architecture comes from
`models/real_size.py`, the inputs are random token ids and pixels shaped as the processor makes them.

    python scripts/check_packing_gpu.py                     # GPU: FA2 padding-free vs SDPA padded, bf16
    python scripts/check_packing_gpu.py --scaled-down --device cpu --attn sdpa   # the code path on CPU (images / 8)

8 samples with images of 6 sizes (4 to 1,024 image tokens) and 16 to 96 text tokens: the padded
batch through SDPA with its padding mask, then the same samples padding-free (one row, positions
restarting per sample: FA2's varlen kernel) through `--attn`. Passes when the losses agree within
`--rel` (bf16 kernels differ in summation order: 2e-3 by default) and the logits of every real token
agree within --logit-tol of their scale. Exit 0 on a pass, 1 on a mismatch, 2 when it cannot run.
Run by scripts/check_multi_gpu.sh too.
"""

from __future__ import annotations

import argparse
import sys

import torch

SIDES = [(56, 56), (112, 84), (224, 168), (280, 448), (448, 448), (896, 896), (168, 336), (84, 140)]
TEXT = [16, 40, 64, 96, 24, 80, 32, 56]


def build(config, attn: str, device: str, dtype):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=attn)
    model.config.use_cache = False
    return model.eval()


def padded_batch(config, shrink: int = 1) -> dict:
    """Right-padded random inputs, one image per sample (SIDES, each side / `shrink`, at least 56 px),
    labels on the last half of its text."""
    vision = config.vision_config
    patch_dim = 3 * vision.temporal_patch_size * vision.patch_size**2
    generator = torch.Generator().manual_seed(0)
    rows, grids, pixels = [], [], []
    for (w, h), text in zip(SIDES, TEXT):
        w, h = max(56, w // shrink // 28 * 28), max(56, h // shrink // 28 * 28)
        gh, gw = h // vision.patch_size, w // vision.patch_size
        tokens = gh * gw // vision.spatial_merge_size**2
        ids = torch.cat([torch.tensor([config.vision_start_token_id] + [config.image_token_id] * tokens
                                      + [config.vision_end_token_id]), torch.randint(100, 150000, (text,), generator=generator)])
        rows.append(ids)
        grids.append([1, gh, gw])
        pixels.append(torch.randn(gh * gw, patch_dim, generator=generator))
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (row, text) in enumerate(zip(rows, TEXT)):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
        labels[i, len(row) - text // 2:len(row)] = row[-(text // 2):]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "mm_token_type_ids": (ids == config.image_token_id).long(),
            "pixel_values": torch.cat(pixels), "image_grid_thw": torch.tensor(grids)}


def loss_and_logits(model, batch: dict, device: str, dtype):
    from vlm_recipes.objectives.sft import token_mean_loss

    inputs = {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device) if torch.is_tensor(v) else v)
              for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        outputs = model(**inputs)
    labels = batch["labels"].to(device)
    loss = token_mean_loss(outputs, labels, (labels[..., 1:] != -100).sum())
    return loss.float().item(), outputs.logits.float()


def main(argv: list[str] | None = None) -> int:
    from vlm_recipes.data.packing import pack_batch
    from vlm_recipes.models.real_size import real_size_config
    from vlm_recipes.training.packing import rope_index_of

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--attn", default="flash_attention_2", help="attention of the packed forward (default FA2)")
    p.add_argument("--scaled-down", action="store_true", help="tiny widths, same token ids (a CPU dry run)")
    p.add_argument("--rel", type=float, default=2e-3)
    p.add_argument("--logit-tol", type=float, default=3e-2, help="largest real-token logit gap / logit scale")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; run with --device cpu --attn sdpa --scaled-down for the code path", file=sys.stderr)
        return 2
    if args.attn == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            print("error: flash_attn is not installed: pip install flash-attn --no-build-isolation", file=sys.stderr)
            return 2
    config = real_size_config("qwen2-vl-2b")
    if args.scaled_down:
        config.text_config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2))
        config.text_config.rope_parameters["mrope_section"] = [2, 3, 3]
        config.vision_config.update(dict(depth=2, embed_dim=64, hidden_size=64, mlp_ratio=2, num_heads=4))
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    batch = padded_batch(config, shrink=8 if args.scaled_down else 1)  # the full vocabulary's logits are large
    padded_model = build(config, "sdpa", args.device, dtype)
    padded_loss, padded_logits = loss_and_logits(padded_model, batch, args.device, dtype)
    packed = pack_batch(batch, rope_index_of(padded_model), None)
    del padded_model
    packed_model = build(config, args.attn, args.device, dtype)  # same seed: the same weights
    packed_loss, packed_logits = loss_and_logits(packed_model, packed, args.device, dtype)
    lengths = batch["attention_mask"].sum(1).tolist()
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    gap = max(float((padded_logits[i, :n] - packed_logits[0, s:s + n]).abs().max()) for i, (n, s) in
              enumerate(zip(lengths, starts)))
    scale = float(padded_logits.abs().max())
    rel = abs(packed_loss - padded_loss) / abs(padded_loss)
    real, fed = sum(lengths), batch["input_ids"].numel()
    print(f"padded (sdpa): loss {padded_loss:.6f}, {fed} tokens fed; padding-free ({args.attn}): loss {packed_loss:.6f}, "
          f"{real} tokens fed ({1 - real / fed:.0%} fewer); loss rel diff {rel:.2e}; largest logit gap {gap:.3g} "
          f"(logit scale {scale:.3g})")
    ok = rel <= args.rel and gap <= args.logit_tol * scale
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

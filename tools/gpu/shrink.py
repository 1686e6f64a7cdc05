"""Training checkpoint -> its EMA weights alone, large tensors in half precision.

A lent GPU machine returns files of at most 16 MiB; a full checkpoint (weights, EMA, Adam's
two moments, all float32) is ~4x that. The EMA weights are what gets exported and evaluated,
and half precision is what ships anyway. Small tensors (entropy-model quantiles, rate gains)
stay float32: the z CDFs are rebuilt from the quantiles at export. The result works with
``vaecodec train --init-from`` and ``vaecodec export`` like a full checkpoint; it stores the
tensors once under both "model" and "ema" (torch.save keeps shared tensors shared)."""

from __future__ import annotations

import sys

import torch


def shrink(src: str, dst: str) -> None:
    ck = torch.load(src, map_location="cpu", weights_only=True)
    ema = {k: (v.half() if v.is_floating_point() and v.numel() > 4096 else v)
           for k, v in ck["ema"].items()}
    torch.save({"model": ema, "ema": ema, "step": ck["step"], "elapsed": ck["elapsed"],
                "config": ck.get("config", {})}, dst)


if __name__ == "__main__":
    shrink(sys.argv[1], sys.argv[2])

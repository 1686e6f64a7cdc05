"""Where one iteration of the encoder search (refine.py) spends its time.

    python benchmarks/search_profile.py IMAGE --out benchmarks/search-profile [--repeat 5]

One iteration is: the decoder's passes in float over the soft symbols (the context, with
gradients), g_s forward, and the backward pass through both. Each part is timed alone, best
of ``--repeat`` after a warm-up, with g_s in float32 and in bfloat16 autocast, each with and
without channels_last, so the search's choices (bfloat16 where ``fastpath.bf16_is_fast``,
channels_last always) can be checked on any machine.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")

from vaecodec import codec, fastpath, machine, refine, weights  # noqa: E402
from vaecodec.bench.measure import best_of  # noqa: E402


def best(f, repeat: int) -> float:
    return best_of(f, repeat, warm_up=True)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("--out", default="benchmarks/search-profile")
    ap.add_argument("--quality", type=float, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    loaded = weights.load()
    m = loaded.model
    rgb = np.asarray(Image.open(a.image).convert("RGB"))
    an = codec.analyze_pixels(rgb, loaded)
    level = codec.quality_to_level(a.quality, m.levels)
    st = refine._start(m, an.y, an.z, level, codec.TILE_LATENTS)
    args = (st["scales_h"], st["means_h"], st["gy"], st["gy_inv"])
    q = st["offsets"].clone().requires_grad_(True)
    res = {}
    with torch.no_grad():
        lat = refine._decode_soft(m, q, *args)[1].detach()

    def ctx_fwd_bwd() -> None:
        s, d = refine._decode_soft(m, q, *args)
        (s.sum() + d.sum()).backward()

    res["context fwd+bwd"] = best(ctx_fwd_bwd, a.repeat)
    for bf16 in (False, True):
        for cl in (False, True):
            def gs(backward: bool) -> None:
                x = lat.contiguous(memory_format=torch.channels_last) if cl else lat
                x = x.clone().requires_grad_(backward)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = m.g_s(x)
                if backward:
                    out.float().pow(2).mean().backward()

            name = f"g_s {'bfloat16' if bf16 else 'float32'}{' channels_last' if cl else ''}"
            with torch.no_grad():
                res[name + " fwd"] = best(lambda: gs(False), a.repeat)
            res[name + " fwd+bwd"] = best(lambda: gs(True), a.repeat)
    out = {"image": Path(a.image).name, "size": list(rgb.shape[:2]), "quality": a.quality,
           "bf16_is_fast": fastpath.bf16_is_fast("cpu"), "seconds": res,
           "machine": machine.info()}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    for k, v in res.items():
        print(f"{k:<40} {v:.3f} s")


if __name__ == "__main__":
    main()

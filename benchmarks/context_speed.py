"""Speed of the checkerboard codec (vaecodec 2) against the hyperprior of vaecodec 1.0.

    python benchmarks/context_speed.py ../shared/data/kodak --out benchmarks/context-speed \
        [--new W2.safetensors] [--old W1.safetensors] [--quality 50] [--repeat 3] [--threads 2]

Both sides run in one process, interleaved per image, with the same thread count: the best
of ``--repeat`` runs after a warm-up of ``vaecodec.encode(image, q)`` (default encoder,
complete .vae bytes) and ``vaecodec.decode(bytes)`` (Pillow image). The ratios new / old
are what the format's speed limit is about (at most 1.3x either way); this VM's run-to-run
drift is a few percent, so compare the ratios, not absolute seconds across runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")

import vaecodec  # noqa: E402
from vaecodec import machine, weights  # noqa: E402
from vaecodec.bench.measure import best_of as best  # noqa: E402
from vaecodec.metrics import psnr  # noqa: E402

V1_HASH = "47ee00b1d1cbe06d"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kodak")
    ap.add_argument("--out", default="benchmarks/context-speed")
    ap.add_argument("--new", default=None, help="default: the shipped weights")
    ap.add_argument("--old", default=None, help="default: the installed 1.0 weights")
    ap.add_argument("--quality", type=float, default=50.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--images", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    new = Path(a.new) if a.new else weights.default_weights_path()
    old = Path(a.old) if a.old else weights.find_by_hash(bytes.fromhex(V1_HASH))
    sides = {"new": new, "old": old}
    files = sorted(Path(a.kodak).glob("*.png"))[: a.images or None]
    rows = []
    for f in files:
        im = Image.open(f).convert("RGB")
        row = {"image": f.name}
        for name, w in sides.items():
            vaecodec.decode(vaecodec.encode(im, a.quality, model=w), model=w)  # warm-up
        for name, w in sides.items():
            te, data = best(lambda: vaecodec.encode(im, a.quality, model=w), a.repeat)
            td, out = best(lambda: vaecodec.decode(data, model=w), a.repeat)
            row[name] = {"encode_s": te, "decode_s": td,
                         "bpp": 8 * len(data) / (im.width * im.height),
                         "psnr": psnr(np.asarray(im), np.asarray(out)),
                         "format_version": vaecodec.read_header(data).version}
        print(f"{f.name}: encode {row['new']['encode_s']:.3f} vs {row['old']['encode_s']:.3f} s,"
              f" decode {row['new']['decode_s']:.3f} vs {row['old']['decode_s']:.3f} s",
              flush=True)
        rows.append(row)

    def total(side: str, k: str) -> float:
        return sum(r[side][k] for r in rows)

    summary = {
        "encode_ratio": total("new", "encode_s") / total("old", "encode_s"),
        "decode_ratio": total("new", "decode_s") / total("old", "decode_s"),
        **{f"{side}_{k}": total(side, k) / (1 if k.endswith("_s") else len(rows))
           for side in sides for k in ("encode_s", "decode_s", "bpp", "psnr")},
    }
    doc = {"command": " ".join(["python", *sys.argv]), "quality": a.quality,
           "threads": torch.get_num_threads(), "repeat": a.repeat,
           "machine": {**machine.info(), "torch": torch.__version__},
           "weights": {k: f"{w.name} ({weights.file_hash(w).hex()})" for k, w in sides.items()},
           "summary": summary, "images": rows}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

"""Joint training, judged by real files of held-out photos.

    python benchmarks/joint.py eval WEIGHTS_OR_CKPT... --label "what the run was"
    python benchmarks/joint.py rates WEIGHTS_OR_CKPT...

``eval``: every held-out photo of ``../shared/data/train`` and ``train_hq`` (the fixed 1/16
chosen by file name, ``vaecodec.train.held_out``; ``vaecodec train`` leaves them out) is
encoded and decoded through the public API with nearest rounding, at qualities 10, 40, 70
and 100 (four rate levels). Per quality: mean bpp, PSNR and the rate-distortion cost
lambda * 255^2 * MSE + bpp at that quality's lambda, the training objective measured on real
files. Each point is stored in ``benchmarks/joint/results.json`` under the file's name and
label; the table prints each cost against the first weights given (negative: better).

``rates``: on the same photos, y's bits as the training loss prices them (uniform noise),
as the float model prices the rounded symbols, and the real files' bits, per channel group
and quality: how far the training rate estimate is from what the coder pays.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
QUALITIES = (10.0, 40.0, 70.0, 100.0)
DATA = ROOT.parent / "shared" / "data"


def held_out_photos(roots: list[Path]) -> list[Path]:
    from vaecodec.train import held_out

    return [f for r in roots for f in sorted(r.glob("*.png")) if held_out(f.name)]


def evaluate(paths: list[str], photos: list[Path], label: str, out: Path) -> list[dict]:
    from learning_curve import measure, weights_file

    store = out / "results.json"
    points = json.loads(store.read_text()) if store.exists() else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in paths:
            t0 = time.time()
            wfile, steps, hours = weights_file(Path(c), Path(tmp))
            r = measure(wfile, photos, list(QUALITIES))
            r.update({"checkpoint": Path(c).name, "label": label, "run_steps": steps,
                      "run_hours": round(hours, 3), "photos": [p.name for p in photos],
                      "seconds": round(time.time() - t0, 1)})
            points = [p for p in points if (p["checkpoint"], p["label"]) != (r["checkpoint"],
                                                                            label)] + [r]
            store.write_text(json.dumps(points, indent=1) + "\n")
            rows.append(r)
            print(f"{r['checkpoint']}: " + "  ".join(
                f"q{q['quality']:g} {q['bpp']:.4f} bpp {q['psnr']:.2f} dB cost {q['loss']:.4f}"
                for q in r["qualities"]) + f"  ({r['seconds']:.0f} s)", flush=True)
    if len(rows) > 1:
        base = rows[0]
        print("\ncost against", base["checkpoint"])
        for r in rows[1:]:
            d = [100 * (q["loss"] / b["loss"] - 1) for q, b in zip(r["qualities"],
                                                                  base["qualities"])]
            print(f"  {r['checkpoint']}: " + " ".join(f"q{q:g} {v:+.2f}%"
                                                     for q, v in zip(QUALITIES, d)))
    return rows


def rates(paths: list[str], photos: list[Path]) -> None:
    import torch

    import vaecodec
    from learning_curve import weights_file
    from vaecodec import weights
    from vaecodec.codec import quality_to_level
    from vaecodec.train_context import grouped_bits, prior

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for c in paths:
            wfile, _, _ = weights_file(Path(c), Path(tmp))
            model = weights.load(wfile, fast=False).model
            print(f"\n{Path(c).name}: y bits per pixel, by group (noise / rounded float), and "
                  "whole files")
            for q in QUALITIES:
                level = torch.tensor([quality_to_level(q, model.levels)])
                noise = rounded = 0
                real = z_r = px = 0.0
                for f in photos:
                    with Image.open(f) as im:
                        im = im.convert("RGB")
                    data = vaecodec.encode(im, q, model=wfile, rdoq=False)
                    real += 8 * len(data)
                    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255)
                    x = x.permute(2, 0, 1)[None]
                    H, W = x.shape[-2:]
                    x = torch.nn.functional.pad(x, (0, -W % 64, 0, -H % 64), mode="replicate")
                    with torch.no_grad():
                        y = model.g_a(x)
                        p = prior(model, y, level)
                        for k, name in ((0, "noise"), (1, "rounded")):
                            b = grouped_bits(model.context, p, noise=(k == 0), per_group=True)
                            if k == 0:
                                noise = noise + b[:, 0]
                            else:
                                rounded = rounded + b[:, 0]
                        z_r += float(p.z_bits.sum())
                    px += H * W
                n, r = noise / px, rounded / px
                print(f"  q{q:g}: " + "  ".join(
                    f"g{k} {float(a):.4f}/{float(b):.4f}" for k, (a, b) in enumerate(zip(n, r)))
                    + f"  | y noise {float(n.sum()):.4f} rounded {float(r.sum()):.4f}"
                    f" ({100 * (float(n.sum()) / float(r.sum()) - 1):+.1f}%); "
                    f"z {z_r / px:.4f}; file {real / px:.4f} bpp", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["eval", "rates"])
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--data", nargs="*", default=[str(DATA / "train"), str(DATA / "train_hq")])
    ap.add_argument("--label", default="")
    ap.add_argument("--limit", type=int, default=0, help="only the first N photos")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "joint"))
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    photos = held_out_photos([Path(d) for d in a.data])
    if a.limit:
        photos = photos[:a.limit]
    if a.what == "eval":
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        evaluate(a.weights, photos, a.label, out)
    else:
        rates(a.weights, photos)
    return 0


if __name__ == "__main__":
    sys.exit(main())

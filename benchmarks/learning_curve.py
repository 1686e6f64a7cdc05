"""Learning curve: Kodak rate-distortion of training checkpoints, and a fit of L(t).

    python benchmarks/learning_curve.py ../shared/data/kodak CKPT_OR_WEIGHTS... \\
        --out benchmarks/learning_curve [--qualities 0,15,30,45,60,80,100]

Each checkpoint (a training checkpoint or snapshot .pt, its EMA weights; or a .safetensors
weights file) is exported to a temporary weights file and used through the public API, so
every number comes from complete .vae files, like ``vaecodec bench``, with the latent rounded
to nearest (``rdoq=False``: this is the weights' curve, comparable from the first point on,
not the encoder's; rdoq.py adds its own gain on top): mean bpp and PSNR per
quality over the images, the BD-rate against the JPEG curve of the committed Kodak bench
(benchmarks/kodak/results.json, measured on the same 24 images), and the mean
rate-distortion loss lambda * 255^2 * MSE + bpp at those qualities (the training objective,
each quality at its own lambda). Results are merged into results.json (keyed by file name and
step), so points from several training runs accumulate; with three or more points of one lambda
grid the loss is fitted as L(t) = a + b * t^-c (t = total training steps) and the fit's
forecast printed.
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


def jpeg_curve(results: Path) -> tuple[list[float], list[float]]:
    data = json.loads(results.read_text())
    pts = sorted((a["bpp"], a["psnr"]) for a in data["aggregates"] if a["codec"] == "jpeg")
    return [p[0] for p in pts], [p[1] for p in pts]


def weights_file(path: Path, tmp: Path) -> tuple[Path, int, float]:
    """-> (a .safetensors file, this checkpoint's run's steps and training hours)."""
    if path.suffix == ".safetensors":
        from vaecodec.weights import read_metadata

        meta = read_metadata(path)
        return path, int(meta.get("steps", 0)), float(meta.get("train_hours", 0))
    import torch

    from vaecodec.train import export_checkpoint

    ck = torch.load(path, map_location="cpu", weights_only=True)
    out = tmp / (path.stem + ".safetensors")
    export_checkpoint(str(path), str(out))
    return out, int(ck.get("step", 0)), float(ck.get("elapsed", 0)) / 3600


def measure(wfile: Path, images: list[Path], qualities: list[float]) -> dict:
    import vaecodec
    from vaecodec import metrics, weights
    from vaecodec.codec import quality_to_level

    model = weights.load(wfile).model
    per_q = []
    for q in qualities:
        bpp, psnr, mse = [], [], []
        for f in images:
            with Image.open(f) as im:
                im = im.convert("RGB")
            data = vaecodec.encode(im, q, model=wfile, rdoq=False)
            out = vaecodec.decode(data, model=wfile)
            m = metrics.mse(im, out)
            bpp.append(8 * len(data) / (im.width * im.height))
            psnr.append(metrics.psnr_from_mse(m))
            mse.append(m)
        import torch

        lam = float(model.lambda_at(torch.tensor([quality_to_level(q, model.levels)]))[0])
        per_q.append({"quality": q, "lambda": lam, "bpp": float(np.mean(bpp)),
                      "psnr": float(np.mean(psnr)),
                      "loss": float(metrics.rd_cost(lam, np.mean(mse), np.mean(bpp)))})
    grid = [round(float(v), 6) for v in model.lambdas]
    return {"qualities": per_q, "lambdas": grid,
            "loss": float(np.mean([p["loss"] for p in per_q]))}


def fit_power_law(t: np.ndarray, L: np.ndarray) -> tuple[float, float, float] | None:
    """L(t) = a + b t^-c by least squares over c on a grid (a, b linear for fixed c)."""
    if len(t) < 3:
        return None
    best = None
    for c in np.linspace(0.05, 3.0, 300):
        X = np.stack([np.ones_like(t), t ** -c], 1)
        coef, *_ = np.linalg.lstsq(X, L, rcond=None)
        err = float(((X @ coef - L) ** 2).sum())
        if coef[1] > 0 and (best is None or err < best[0]):
            best = (err, float(coef[0]), float(coef[1]), float(c))
    return None if best is None else best[1:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kodak")
    ap.add_argument("checkpoints", nargs="*", help="none: only refit the stored points")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "learning_curve"))
    ap.add_argument("--qualities", default="0,15,30,45,60,80,100")
    ap.add_argument("--prior-steps", type=int, default=0,
                    help="steps before these checkpoints' run (warm start, earlier runs)")
    ap.add_argument("--step-scale", type=float, default=1.0,
                    help="counts each of these checkpoints' own steps as this many: a run "
                         "with other batches (a GPU's 32 x 256^2 is 7.11 of the CPU's "
                         "8 x 192^2 in pixels) joins the curve in equal pixels seen")
    ap.add_argument("--label", default="", help="a note stored with these points")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    import torch

    from vaecodec.bench import bd_rate

    if a.threads:
        torch.set_num_threads(a.threads)
    images = sorted(Path(a.kodak).glob("*.png"))
    qualities = [float(q) for q in a.qualities.split(",")]
    jb, jp = jpeg_curve(ROOT / "benchmarks" / "kodak" / "results.json")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    points = json.loads(store.read_text()) if store.exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        for c in a.checkpoints:
            t0 = time.time()
            wfile, own, hours = weights_file(Path(c), Path(tmp))
            steps = a.prior_steps + round(own * a.step_scale)
            r = measure(wfile, images, qualities)
            r.update({"checkpoint": Path(c).name, "steps": steps, "run_hours": round(hours, 3),
                      "images": len(images), "label": a.label, "step_scale": a.step_scale,
                      "bd_rate_vs_jpeg": bd_rate(jb, jp, [p["bpp"] for p in r["qualities"]],
                                                 [p["psnr"] for p in r["qualities"]])})
            points = [p for p in points if (p["checkpoint"], p["steps"]) != (r["checkpoint"],
                                                                           steps)] + [r]
            print(f"{r['checkpoint']}: steps {steps}, BD-rate vs JPEG {r['bd_rate_vs_jpeg']:+.2f}%,"
                  f" loss {r['loss']:.4f}, bpp {r['qualities'][0]['bpp']:.3f}.."
                  f"{r['qualities'][-1]['bpp']:.3f} ({time.time() - t0:.0f} s)", flush=True)
            store.write_text(json.dumps(sorted(points, key=lambda p: p["steps"]), indent=1) + "\n")
    if not points:
        print(f"no points in {store}: give checkpoints to evaluate", file=sys.stderr)
        return 2
    grid = points[-1]["lambdas"]
    same = sorted((p for p in points if p["lambdas"] == grid), key=lambda p: p["steps"])
    t = np.array([p["steps"] for p in same], dtype=np.float64)
    L = np.array([p["loss"] for p in same])
    fit = fit_power_law(t, L)
    if fit:
        fa, fb, fc = fit
        # An exponent at the edge of the searched range or a negative asymptote (the loss
        # is a sum of non-negative terms) means the points do not pin the curve down.
        degenerate = bool(fa < 0 or fc <= 0.05 + 1e-9 or fc >= 3.0 - 1e-9)
        print(f"L(t) = {fa:.4f} + {fb:.4g} * t^-{fc:.3f} over {len(t)} points"
              + ("  (degenerate: not a forecast)" if degenerate else ""))
        for more in (10_000, 50_000, 200_000):
            print(f"  +{more} steps: L = {fa + fb * (t[-1] + more) ** -fc:.4f}")
        (out / "fit.json").write_text(json.dumps(
            {"a": fa, "b": fb, "c": fc, "points": len(t), "last_steps": int(t[-1]),
             "degenerate": degenerate,
             "forecast": {str(m): fa + fb * (t[-1] + m) ** -fc for m in (10_000, 50_000,
                                                                         200_000)}},
            indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

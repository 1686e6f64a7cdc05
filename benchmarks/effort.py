"""What each ``--effort`` level buys: BD-rate against effort 0, and encode seconds per MP.

    python benchmarks/effort.py PHOTO [PHOTO ...] --out benchmarks/effort \
        [--qualities 10,40,70,95] [--efforts 1,2,3,4] [--threads 2]

Every image is encoded with ``vaecodec.encode(image, q, effort=e)`` (complete .vae bytes,
the search's file kept only where it lowers the real cost, as always) and decoded with
``vaecodec.decode``; PSNR on 8-bit RGB. Per level: the BD-rate of its mean curve against
effort 0's on the same images (negative = fewer bits at equal PSNR), the mean change of the
rate-distortion cost at each quality's own lambda, and the encode wall time per megapixel
(total, and the search's share: total minus effort 0's). The levels' iterations are
``vaecodec.codec.EFFORT_ITERATIONS``; the table in ``table.md`` is what the CLI help and the
README quote. Pick photos that are neither Kodak nor the context's training photos.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")

import vaecodec  # noqa: E402
from vaecodec import codec, machine, metrics, refine, weights  # noqa: E402
from vaecodec.bench.bdrate import bd_psnr, bd_rate  # noqa: E402
from vaecodec.bench.results import json_safe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", nargs="+")
    ap.add_argument("--out", default="benchmarks/effort")
    ap.add_argument("--qualities", default="10,40,70,95")
    ap.add_argument("--efforts", default="1,2,3,4")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    qualities = [float(q) for q in a.qualities.split(",")]
    efforts = [0] + [int(e) for e in a.efforts.split(",")]
    loaded = weights.load()
    rows = []
    for path in a.photos:
        im = Image.open(path).convert("RGB")
        rgb = np.asarray(im)
        mp = im.width * im.height / 1e6
        vaecodec.decode(vaecodec.encode(im, 50))  # warm-up
        for q in qualities:
            lam = loaded.model.lambda_for(codec.quality_to_level(q, loaded.model.levels))
            for e in efforts:
                t = time.perf_counter()
                data = vaecodec.encode(im, q, effort=e)
                sec = time.perf_counter() - t
                err = metrics.mse(np.asarray(vaecodec.decode(data)), rgb)
                bpp = 8 * len(data) / (im.width * im.height)
                rows.append({"image": Path(path).name, "quality": q, "effort": e,
                             "bytes": len(data), "bpp": bpp, "psnr": metrics.psnr_from_mse(err),
                             "rd_cost": metrics.rd_cost(lam, err, bpp), "enc_s": sec,
                             "mp": mp})
                print(json.dumps(rows[-1]), flush=True)
    summary = summarise(rows, qualities, efforts)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"photos": [Path(p).name for p in a.photos], "qualities": qualities,
              "efforts": efforts, "weights": weights.file_hash(
                  weights.default_weights_path()).hex(),
              "iterations": {e: codec.EFFORT_ITERATIONS[e] for e in efforts},
              "lr": refine.LR, "tau": [refine.TAU_START, refine.TAU_END],
              "command_line": sys.argv}
    (out / "results.json").write_text(json.dumps(json_safe(
        {"config": config, "machine": machine.info(), "summary": summary, "rows": rows}),
        indent=2) + "\n")
    (out / "table.md").write_text(table(summary) + "\n")
    print(table(summary))


def summarise(rows: list[dict], qualities: list[float], efforts: list[int]) -> list[dict]:
    def mean(key: str, e: int, q: float | None = None) -> float:
        return float(np.mean([r[key] for r in rows if r["effort"] == e
                              and (q is None or r["quality"] == q)]))

    base = ([mean("bpp", 0, q) for q in qualities], [mean("psnr", 0, q) for q in qualities])
    mp = float(np.mean([r["mp"] for r in rows]))
    t0 = float(np.mean([r["enc_s"] / r["mp"] for r in rows if r["effort"] == 0]))
    out = []
    for e in efforts:
        curve = ([mean("bpp", e, q) for q in qualities], [mean("psnr", e, q) for q in qualities])
        cost = [100 * (np.mean([r["rd_cost"] for r in rows if r["effort"] == e
                                and r["quality"] == q]) / np.mean(
            [r["rd_cost"] for r in rows if r["effort"] == 0 and r["quality"] == q]) - 1)
            for q in qualities]
        s_mp = float(np.mean([r["enc_s"] / r["mp"] for r in rows if r["effort"] == e]))
        out.append({"effort": e, "bd_rate_vs_effort0": bd_rate(*base, *curve) if e else 0.0,
                    "bd_psnr_vs_effort0": bd_psnr(*base, *curve) if e else 0.0,
                    "rd_cost_change_by_quality": dict(zip(map(str, qualities), cost)),
                    "enc_s_per_mp": s_mp, "search_s_per_mp": s_mp - t0,
                    "enc_s_mean_image": float(np.mean([r["enc_s"] for r in rows
                                                       if r["effort"] == e])),
                    "mean_mp": mp})
    return out


def table(summary: list[dict]) -> str:
    qs = list(summary[0]["rd_cost_change_by_quality"])
    lines = ["| effort | BD-rate vs 0 | BD-PSNR | " + " | ".join(f"cost q{q:g}" for q in
                                                              map(float, qs))
             + " | encode s/MP | of which search |",
             "|---|---|---|" + "---|" * len(qs) + "---|---|"]
    for s in summary:
        c = s["rd_cost_change_by_quality"]
        lines.append(f"| {s['effort']} | {s['bd_rate_vs_effort0']:+.2f}% | "
                     f"{s['bd_psnr_vs_effort0']:+.3f} dB | "
                     + " | ".join(f"{c[q]:+.2f}%" for q in qs)
                     + f" | {s['enc_s_per_mp']:.1f} | {s['search_s_per_mp']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

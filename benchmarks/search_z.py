"""Is z worth searching? The encoder search (refine.py) on y alone against y and z together.

    python benchmarks/search_z.py PHOTO [PHOTO ...] --out benchmarks/search-z \
        [--qualities 10,40,70,95] [--iterations 40] [--seeds 0] [--threads 2]

For every photo, quality and seed: the real rate-distortion cost (the decoder's 8-bit
pixels, the strings' bytes, at the quality's own lambda) of the search's own file, before
the encoder's keep-the-better rule, so that the search itself is judged, as a change
against the plain file's. Variants: y alone (what ``--effort`` does), and y with z at
several Adam steps, z rounded straight-through (y's passes always see the z the decoder
will) or annealed like y. A single search moves by up to a percent from seed to seed
(``--seeds`` averages over several). Pick photos that are neither Kodak nor the context's
training photos (the held-out ones).
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

from vaecodec import codec, machine, refine, weights  # noqa: E402
from vaecodec.bench.results import json_safe  # noqa: E402

#: (name, search z, z's Adam step, z annealed)
VARIANTS = [("y", False, 0.0, False),
            ("y+z ste 0.01", True, 0.01, False),
            ("y+z sga 0.01", True, 0.01, True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", nargs="+")
    ap.add_argument("--out", default="benchmarks/search-z")
    ap.add_argument("--qualities", default="10,40,70,95")
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    qualities = [float(q) for q in a.qualities.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    loaded = weights.load()
    model = loaded.model
    rows = []
    for path in a.photos:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        an = codec.analyze_pixels(rgb, loaded)
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None]
        for q in qualities:
            level = codec.quality_to_level(q, model.levels)
            lam = model.lambda_for(level)
            plain, y_plain = codec.code_at(an, q, loaded)
            base = codec._rd_cost(an, plain, y_plain, loaded, lam)
            for name, search_z, lr_z, anneal in VARIANTS:
                refine.LR_Z, refine.Z_ANNEAL = lr_z, anneal
                for seed in seeds:
                    t = time.perf_counter()
                    y, z = refine.refine(model, an.y, an.z, x, level, a.iterations, seed=seed,
                                         search_z=search_z)
                    coded, y_hat = codec._code_latent(an, y, plain.header.quality, level, loaded,
                                                      True, False, z=z)
                    cost = codec._rd_cost(an, coded, y_hat, loaded, lam)
                    rows.append({"image": Path(path).name, "quality": q, "variant": name,
                                 "seed": seed, "cost_change": 100 * (cost / base - 1),
                                 "z_bytes": len(coded.z_string), "z_bytes_plain":
                                 len(plain.z_string), "seconds": time.perf_counter() - t})
                    print(json.dumps(rows[-1]), flush=True)
    summary = {name: {f"q{q:g}": float(np.mean([r["cost_change"] for r in rows
                                                 if r["variant"] == name and r["quality"] == q]))
                      for q in qualities} for name, *_ in VARIANTS}
    for name in summary:
        vs = [r for r in rows if r["variant"] == name]
        summary[name]["mean"] = float(np.mean([r["cost_change"] for r in vs]))
        summary[name]["z_bytes_change"] = 100 * (np.mean([r["z_bytes"] for r in vs])
                                                 / np.mean([r["z_bytes_plain"] for r in vs]) - 1)
        summary[name]["seconds"] = float(np.mean([r["seconds"] for r in vs]))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"photos": [Path(p).name for p in a.photos], "qualities": qualities,
              "iterations": a.iterations, "seeds": seeds, "lr_y": refine.LR,
              "tau": [refine.TAU_START, refine.TAU_END], "variants": VARIANTS,
              "weights": weights.file_hash(weights.default_weights_path()).hex(),
              "command_line": sys.argv}
    (out / "results.json").write_text(json.dumps(json_safe(
        {"config": config, "machine": machine.info(), "summary": summary, "rows": rows}),
        indent=2) + "\n")
    (out / "table.md").write_text(table(summary, qualities) + "\n")
    print(table(summary, qualities))


def table(summary: dict, qualities: list[float]) -> str:
    lines = ["| search | " + " | ".join(f"cost q{q:g}" for q in qualities)
             + " | mean | z bytes | s/search |",
             "|---|" + "---|" * len(qualities) + "---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | " + " | ".join(f"{s[f'q{q:g}']:+.2f}%" for q in qualities)
                     + f" | {s['mean']:+.2f}% | {s['z_bytes_change']:+.1f}% | {s['seconds']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Cost of the integer hyper-synthesis (README, "Decode anywhere"): BD-rate and decode time of
the integer path against the float path, same weights, same images, same process.

    python benchmarks/integer_path.py ../shared/data/kodak --out benchmarks/integer_path
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vaecodec import codec, image, machine, metrics, weights
from vaecodec.bench import bd_psnr, bd_rate

QUALITIES = (0, 15, 30, 45, 60, 80, 100)


def measure(rgb, q, loaded, integer):
    t = time.perf_counter()
    c = codec.encode_pixels(rgb, q, loaded, integer=integer)
    enc = time.perf_counter() - t
    t = time.perf_counter()
    out = codec.decode_pixels(c, loaded, integer=integer)
    dec = time.perf_counter() - t
    nbytes = len(c.y_string) + len(c.z_string)
    return 8 * nbytes / (rgb.shape[0] * rgb.shape[1]), metrics.psnr(rgb, out), enc, dec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("directory")
    ap.add_argument("--out")
    a = ap.parse_args()
    loaded = weights.load()
    files = sorted(Path(a.directory).glob("*.png"))
    res = {}
    for integer in (False, True):
        rows = []
        for q in QUALITIES:
            per = [measure(image.split(Image.open(f)).rgb, q, loaded, integer) for f in files]
            rows.append([float(np.mean([p[i] for p in per])) for i in range(4)])
        res["integer" if integer else "float"] = rows
    f, i = np.array(res["float"]), np.array(res["integer"])
    summary = {
        "bd_rate_percent": bd_rate(f[:, 0], f[:, 1], i[:, 0], i[:, 1]),
        "bd_psnr_db": bd_psnr(f[:, 0], f[:, 1], i[:, 0], i[:, 1]),
        "decode_s_float": float(f[:, 3].mean()), "decode_s_integer": float(i[:, 3].mean()),
        "encode_s_float": float(f[:, 2].mean()), "encode_s_integer": float(i[:, 2].mean()),
        "images": len(files), "qualities": QUALITIES,
        "machine": machine.info(),
        "note": "bpp counts the entropy-coded strings only (the container adds the same bytes to both)",
        "per_quality": {"float": res["float"], "integer": res["integer"],
                        "columns": ["bpp", "psnr", "enc_s", "dec_s"]},
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "per_quality"}, indent=1))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "results.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

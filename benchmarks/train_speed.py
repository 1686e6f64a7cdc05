"""Training throughput: crops per second of ``vaecodec train``, this checkout against another.

    python benchmarks/train_speed.py --other /path/to/other/checkout --out benchmarks/train-speed

Each configuration (batch x crop) runs ``vaecodec train`` from the shipped weights for
``--steps`` steps in each checkout in turn, A B A B (so a drift of the machine's speed hits
both alike), logging every 50 steps; the rate is taken between the first and the last log line,
after the warm-up, the photo loading and the first steps are behind it. The photos are a
fixed small subset of the training set, so loading them costs little. Quote the medians.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "models" / "vaecodec-groups-vr.safetensors"


def one_run(src: Path, data: Path, batch: int, crop: int, steps: int, threads: int,
            extra: list[str]) -> float:
    """Crops per second between the first and the last log line of one run."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.csv"
        cmd = [sys.executable, "-m", "vaecodec", "train", str(data), "--out",
               str(Path(tmp) / "ck.pt"), "--init-from", str(WEIGHTS), "--steps", str(steps),
               "--batch-size", str(batch), "--crop", str(crop), "--log", str(log),
               "--threads", str(threads), *extra]
        env = dict(os.environ, PYTHONPATH=str(src))
        subprocess.run(cmd, cwd=src, env=env, check=True, capture_output=True)
        rows = list(csv.reader(log.open()))
    (s0, t0), (s1, t1) = [(int(r[0]), float(r[1])) for r in (rows[0], rows[-1])]
    if t1 <= t0:
        raise RuntimeError(f"log too short to time: {rows}")
    return (s1 - s0) * batch / (t1 - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--other", required=True, help="the checkout to compare against")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "train"))
    ap.add_argument("--photos", type=int, default=40)
    ap.add_argument("--configs", default="8x128,16x128,8x192")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra", default="", help="options for this checkout's runs only")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "train-speed"))
    a = ap.parse_args()
    other = Path(a.other).resolve()
    # the other checkout logs every 50 steps: the same window in both
    mine = ["--log-every", "50", *a.extra.split()]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "photos"
        data.mkdir()
        for f in sorted(Path(a.data).glob("*.png"))[:a.photos]:
            os.symlink(f, data / f.name)
        results = []
        for cfg in a.configs.split(","):
            batch, crop = (int(v) for v in cfg.split("x"))
            rates: dict[str, list[float]] = {"this": [], "other": []}
            for _ in range(a.repeat):
                for name, src, extra in (("other", other, []), ("this", ROOT, mine)):
                    rates[name].append(one_run(src, data, batch, crop, a.steps, a.threads,
                                               extra))
            med = {k: statistics.median(v) for k, v in rates.items()}
            results.append({"batch": batch, "crop": crop, "crops_per_s": rates,
                            "median": med, "ratio": med["this"] / med["other"]})
            print(f"{batch} x {crop}^2: this {med['this']:.2f} crops/s, other "
                  f"{med['other']:.2f} crops/s, ratio {med['this'] / med['other']:.2f} "
                  f"({rates})", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu = ""
    if Path("/proc/cpuinfo").exists():
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                    if ln.startswith("model name")), "")
        flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
        cpu += " | " + " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                                if f" {f}" in flags)
    (out / "results.json").write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "platform": platform.platform(), "cpu": cpu,
        "other": str(other), "steps": a.steps, "threads": a.threads, "photos": a.photos,
        "extra": a.extra, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

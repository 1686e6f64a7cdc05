"""Cold start: the wall time of one `vaecodec encode` / `decode` of one image in a new process,
against the wall time of `python -c "import torch"` (the floor of any torch program).

    python benchmarks/coldstart.py ../shared/data/kodak/kodim01.png --out benchmarks/coldstart \
        [--repeat 7]

Each repeat runs, one after the other in a fresh process each: ``python -c "import torch"``,
``vaecodec encode IMG -o T.vae --quiet``, ``vaecodec decode T.vae -o T.png --quiet``,
``vaecodec --help`` and ``vaecodec info T.vae``; interleaving them spreads the drift of a
shared machine over all five (their CPU time is recorded too). The first repeat is a warm-up for the page cache and is not
counted. Ratios are of medians (and of minima, the steadier figure on a busy machine).
The goal: encode and decode within 1.5x of ``import torch``. The machine (the CPU's model
name, cores, load average before and after) is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from vaecodec import machine


def vaecodec_command() -> list[str]:
    """The console script next to this interpreter (what a user runs), else the module."""
    script = Path(sys.executable).parent / "vaecodec"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vaecodec.cli"]


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system, all threads) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True)
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr.decode()}")
    return dt, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", help="a Kodak-size image (PNG)")
    ap.add_argument("--out", help="write results.json here")
    ap.add_argument("--repeat", type=int, default=7, help="counted repeats (after 1 warm-up)")
    a = ap.parse_args()

    vae = vaecodec_command()
    tmp = Path(tempfile.mkdtemp(prefix="coldstart-"))
    cmds = {
        "import_torch": [sys.executable, "-c", "import torch"],
        "encode": vae + ["encode", a.image, "-o", str(tmp / "t.vae"), "--quiet"],
        "decode": vae + ["decode", str(tmp / "t.vae"), "-o", str(tmp / "t.png"), "--quiet"],
        "help": vae + ["--help"],
        "info": vae + ["info", str(tmp / "t.vae")],
    }
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {k: [] for k in cmds}
    cpu: dict[str, list[float]] = {k: [] for k in cmds}
    try:
        for i in range(a.repeat + 1):
            for name, cmd in cmds.items():
                t, c = timed(cmd)
                if i:
                    times[name].append(t)
                    cpu[name].append(c)
            if i:
                print(f"repeat {i}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                      flush=True)
        size = (tmp / "t.vae").stat().st_size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()

    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    ratios = {f"{k}_vs_torch": {"median": med[k] / med["import_torch"],
                                "min": low[k] / low["import_torch"]}
              for k in ("encode", "decode", "help", "info")}
    import torch  # noqa: E402  (only for its version and thread count)

    result = {
        "config": {"image": a.image, "repeat": a.repeat, "vaecodec_bytes": size,
                   "commands": {k: " ".join(v) for k, v in cmds.items()},
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "machine": {**machine.info(), "torch": torch.__version__,
                    "loadavg_before": load_before, "loadavg_after": load_after},
        "seconds": {"median": med, "min": low, "all": times},
        # CPU time is steadier than wall time on a shared machine, but not the same measure:
        # the transforms run on every core, the imports on one
        "cpu_seconds": {"median": {k: statistics.median(v) for k, v in cpu.items()},
                        "all": cpu},
        "ratios": ratios,
        "goal": "encode and decode <= 1.5x import torch",
    }
    for k, r in ratios.items():
        print(f"{k}: {r['median']:.2f}x (median), {r['min']:.2f}x (min)")
    print(f"import torch: median {med['import_torch']:.2f} s; machine: {machine.cpu_model()}, "
          f"{os.cpu_count()} CPUs, load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()

"""Rate control on Kodak: how close `encode(size=...)` lands below its byte target, how close
`encode(psnr=...)` lands to its PSNR target (measured on the decoded image), how many tries
the search takes, and what it costs next to one fixed-quality encode.

    python benchmarks/ratecontrol.py ../shared/data/kodak --out benchmarks/ratecontrol

Writes results.json (configuration, machine, every row with its tries), results.csv (one row
per image and target) and summary.md (the table this prints).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vaecodec
from vaecodec import machine, ratecontrol
from vaecodec.bench.results import json_safe
from vaecodec.metrics import psnr

FAR = 0.97        # the issue: "lands within 3% below" the size target
PSNR_MISS = 0.2   # the issue: "--target-psnr lands within 0.2 dB"
PLAIN_QUALITY = 50.0

# --- count the tries: wrap the search the fit_* functions call (looked up at call time) ----
_searches: list = []
_original_search = ratecontrol._search


def _counting_search(*args, **kwargs):
    s = _original_search(*args, **kwargs)
    _searches.append(s)
    return s


ratecontrol._search = _counting_search


def _last_search():
    return _searches[-1] if _searches else None


def _floats(value: str) -> list[float]:
    return [float(v) for v in value.split(",") if v.strip()]


def timed_encode(im: Image.Image, **target):
    """One rate-controlled encode -> (bytes or None, error message or None, seconds, the
    Search it ran)."""
    _searches.clear()
    t = time.perf_counter()
    try:
        data, err = vaecodec.encode(im, **target), None
    except vaecodec.VaecodecError as e:
        data, err = None, str(e)
    return data, err, time.perf_counter() - t, _last_search()


def size_row(im: Image.Image, name: str, bpp: float, plain_s: float) -> dict:
    w, h = im.size
    target = int(bpp * w * h / 8)
    data, err, sec, s = timed_encode(im, size=target)
    tries = [[float(q), len(r)] for q, _, r in s.tries] if s else []
    row = {"image": name, "width": w, "height": h, "kind": "size", "target": bpp,
           "target_bytes": target, "bytes": None, "bpp": None, "ratio": None, "quality": None,
           "psnr": None, "search_value": None, "error": None, "tries": len(tries),
           "seconds": sec, "plain_seconds": plain_s, "status": None, "message": err,
           "try_list": tries}
    if data is None:
        # fit_size raises TargetError when even quality 0 is larger than the target
        row["status"] = ("unreachable-low" if isinstance(err, str) and "cannot fit" in err
                         else "error")
        return row
    q = float(vaecodec.read_header(data).quality)
    n = len(data)
    row.update(bytes=n, bpp=8 * n / (w * h), ratio=n / target, quality=q,
               search_value=float(s.value) if s else None)
    if n > target:
        row["status"] = "over"
    elif n < FAR * target:
        row["status"] = "unreachable-high" if q >= 100.0 else "far"
    else:
        row["status"] = "ok"
    return row


def psnr_row(im: Image.Image, rgb: np.ndarray, name: str, target: float, plain_s: float) -> dict:
    w, h = im.size
    data, err, sec, s = timed_encode(im, psnr=target)
    tries = [[float(q), float(v), len(r[0])] for q, v, r in s.tries] if s else []
    row = {"image": name, "width": w, "height": h, "kind": "psnr", "target": target,
           "target_bytes": None, "bytes": None, "bpp": None, "ratio": None, "quality": None,
           "psnr": None, "search_value": None, "error": None, "tries": len(tries),
           "seconds": sec, "plain_seconds": plain_s, "status": "error", "message": err,
           "try_list": tries}
    if data is None:
        return row
    q = float(vaecodec.read_header(data).quality)
    real = psnr(rgb, vaecodec.decode(data))
    e = real - target
    row.update(bytes=len(data), bpp=8 * len(data) / (w * h), quality=q, psnr=real,
               search_value=float(s.value) if s else None, error=e)
    if abs(e) <= PSNR_MISS:
        row["status"] = "ok"
    elif (q <= 0.0 and e > 0) or (q >= 100.0 and e < 0):
        row["status"] = "out-of-range"   # the target lies beyond the model's range
    else:
        row["status"] = "miss"
    return row


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _f(v, spec):
    return "-" if v is None else format(v, spec)


def summarize(rows: list[dict], bpps: list[float], psnrs: list[float], n_images: int) -> str:
    plain = _mean([r["plain_seconds"] for r in rows])
    out = [f"Rate control on {n_images} image(s); plain encode at quality {PLAIN_QUALITY:g}: "
           f"{_f(plain, '.3f')} s mean.", ""]
    if bpps:
        out += ["### Size targets (`size=int(bpp*w*h/8)`)", "",
                "ratio = bytes / target over the images the model's range can reach "
                f"(far: < {FAR:g}; unreach. low: even quality 0 is larger, high: quality 100 "
                "is still far below).", "",
                "| bpp | n | mean ratio | min ratio | max ratio | over | far | unreach. low "
                "| unreach. high | mean tries | mean s | × plain |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for b in bpps:
            rs = [r for r in rows if r["kind"] == "size" and r["target"] == b]
            inr = [r["ratio"] for r in rs if r["status"] in ("ok", "over", "far")]
            cnt = {k: sum(r["status"] == k for r in rs)
                   for k in ("over", "far", "unreachable-low", "unreachable-high", "error")}
            sec = _mean([r["seconds"] for r in rs])
            out.append(
                f"| {b:g} | {len(rs)} | {_f(_mean(inr), '.4f')} | "
                f"{_f(min(inr) if inr else None, '.4f')} | {_f(max(inr) if inr else None, '.4f')}"
                f" | {cnt['over']} | {cnt['far']} | {cnt['unreachable-low']} | "
                f"{cnt['unreachable-high']} | {_f(_mean([r['tries'] for r in rs]), '.2f')} | "
                f"{_f(sec, '.3f')} | {_f(sec / plain if sec and plain else None, '.2f')} |"
                + (f" ({cnt['error']} error)" if cnt["error"] else ""))
        out.append("")
    if psnrs:
        out += ["### PSNR targets (`psnr=`; error = PSNR of the decoded image − target)", "",
                f"|error| statistics over the in-range results; miss: |error| > {PSNR_MISS:g} dB "
                "with the target inside the range; out of range: quality 0 or 100 chosen "
                "and the target beyond it.", "",
                "| PSNR | n | mean abs err | max abs err | miss | out of range | mean quality "
                "| mean tries | mean s | × plain |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for p in psnrs:
            rs = [r for r in rows if r["kind"] == "psnr" and r["target"] == p]
            inr = [abs(r["error"]) for r in rs if r["status"] in ("ok", "miss")]
            sec = _mean([r["seconds"] for r in rs])
            errs = sum(r["status"] == "error" for r in rs)
            out.append(
                f"| {p:g} | {len(rs)} | {_f(_mean(inr), '.3f')} | "
                f"{_f(max(inr) if inr else None, '.3f')} | "
                f"{sum(r['status'] == 'miss' for r in rs)} | "
                f"{sum(r['status'] == 'out-of-range' for r in rs)} | "
                f"{_f(_mean([r['quality'] for r in rs]), '.1f')} | "
                f"{_f(_mean([r['tries'] for r in rs]), '.2f')} | {_f(sec, '.3f')} | "
                f"{_f(sec / plain if sec and plain else None, '.2f')} |"
                + (f" ({errs} error)" if errs else ""))
        out.append("")
    bad = [r for r in rows if r["status"] in ("over", "far", "miss", "error")]
    out.append(f"Failures of the search (over / far / miss / error): {len(bad)}")
    for r in bad:
        what = (f"{r['bytes']} B for {r['target_bytes']} B (ratio {_f(r['ratio'], '.4f')})"
                if r["kind"] == "size" else f"PSNR {_f(r['psnr'], '.3f')} (error "
                f"{_f(r['error'], '+.3f')})")
        out.append(f"- {r['image']} {r['kind']} {r['target']:g}: {r['status']}, {what}, "
                   f"quality {_f(r['quality'], '.3f')}, tries {r['try_list']}"
                   + (f", {r['message']}" if r["message"] else ""))
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory")
    ap.add_argument("--out", default="benchmarks/ratecontrol")
    ap.add_argument("--bpp", default="0.15,0.25,0.5,1.0,1.5", help="bpp targets, comma-separated")
    ap.add_argument("--psnr", default="27,30,33,36", help="PSNR targets (dB), comma-separated")
    ap.add_argument("--images", type=int, default=None, help="only the first N images by name")
    a = ap.parse_args()
    bpps, psnrs = _floats(a.bpp), _floats(a.psnr)
    files = sorted(p for p in Path(a.directory).iterdir()
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"))
    if a.images is not None:
        files = files[:a.images]
    if not files:
        sys.exit(f"no images in {a.directory}")

    # warm-up: model load and first-call costs are not timed
    vaecodec.encode(Image.new("RGB", (64, 64), (128, 128, 128)), PLAIN_QUALITY)

    rows: list[dict] = []
    for f in files:
        im = Image.open(f)
        im.load()
        rgb = np.asarray(im.convert("RGB"))
        t = time.perf_counter()
        vaecodec.encode(im, PLAIN_QUALITY)
        plain_s = time.perf_counter() - t
        for b in bpps:
            r = size_row(im, f.name, b, plain_s)
            rows.append(r)
            print(f"{f.name} bpp {b:g}: {r['status']} ratio {_f(r['ratio'], '.4f')} q "
                  f"{_f(r['quality'], '.2f')} tries {r['tries']} {r['seconds']:.2f}s",
                  file=sys.stderr, flush=True)
        for p in psnrs:
            r = psnr_row(im, rgb, f.name, p, plain_s)
            rows.append(r)
            print(f"{f.name} psnr {p:g}: {r['status']} real {_f(r['psnr'], '.3f')} q "
                  f"{_f(r['quality'], '.2f')} tries {r['tries']} {r['seconds']:.2f}s",
                  file=sys.stderr, flush=True)

    summary = summarize(rows, bpps, psnrs, len(files))
    print(summary)
    commit, dirty = machine.source_revision()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "directory": str(a.directory), "images": [f.name for f in files],
        "bpp_targets": bpps, "psnr_targets": psnrs, "plain_quality": PLAIN_QUALITY,
        "far_below": FAR, "psnr_miss_db": PSNR_MISS,
        "size_tolerance": "fit_size default", "max_tries": ratecontrol.MAX_TRIES,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git_commit": commit, "vaecodec_dirty": bool(dirty),
    }
    host = {**machine.info(), "torch": torch.__version__, "vaecodec": vaecodec.__version__}
    notes = {
        "size rows": "target_bytes = int(bpp*w*h/8); ratio = bytes/target_bytes; try_list = "
                     "[quality, bytes] per try",
        "psnr rows": "psnr = PSNR of vaecodec.decode(data) over RGB, 8-bit peak; error = psnr - "
                     "target; search_value = the PSNR the search measured; try_list = "
                     "[quality, psnr, bytes] per try",
        "seconds": "wall time of vaecodec.encode with the target (decode not included); "
                   "plain_seconds: vaecodec.encode(image, 50) of the same image",
        "status": "ok | over | far | unreachable-low | unreachable-high (size); ok | miss | "
                  "out-of-range (psnr); error",
    }
    (out / "results.json").write_text(json.dumps(
        json_safe({"config": config, "machine": host, "notes": notes, "summary_md": summary,
                   "rows": rows}), indent=1, allow_nan=False) + "\n")
    cols = ["image", "width", "height", "kind", "target", "target_bytes", "bytes", "bpp", "ratio",
            "quality", "psnr", "search_value", "error", "tries", "seconds", "plain_seconds",
            "status"]
    with open(out / "results.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(cols)
        for r in rows:
            wr.writerow(["" if r[c] is None else (f"{r[c]:.6g}" if isinstance(r[c], float)
                                                  else r[c]) for c in cols])
    (out / "summary.md").write_text(summary)


if __name__ == "__main__":
    main()

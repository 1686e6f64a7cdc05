"""How a bench result reaches people and other programs: the printed table, results.json,
results.csv and the RD plot.  Apart from the run so that a result can be written or drawn
again without measuring anything (``write_outputs`` rebuilds the curves from a result alone),
and so that matplotlib, the slowest import of the bench, is loaded only when a plot is
actually drawn.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from .codecs import ANCHOR, CODECS, Setting
from .results import BenchResult, Row, rd_curves


def _fmt(v: float | None, spec: str, none: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def _setting_str(s: Setting) -> str:
    return "-" if s is None else format(s, "g")


def format_table(result: BenchResult) -> str:
    """The human summary: one line per codec and setting, then the BD table."""
    cfg = result.config
    lines = [
        f"{cfg['n_images']} images from {cfg['directory']}; means per setting "
        f"(PSNR: mean of per-image RGB PSNR)",
        "",
        f"{'codec':<24} {'setting':>7} {'n':>3} {'bpp':>8} {'PSNR dB':>8} {'MS-SSIM':>8} "
        f"{'enc ms':>9} {'dec ms':>9}",
    ]
    for a in result.aggregates:
        name = f"{a.codec} [ref]" if a.reference else a.codec
        label = CODECS[a.codec].setting_label if a.codec in CODECS else ""
        setting = _setting_str(a.setting) if not a.reference else str(a.setting)
        lines.append(
            f"{name:<24} {setting:>7} {a.n_images if not a.reference else '':>3} "
            f"{_fmt(a.bpp, '.4f'):>8} {_fmt(a.psnr, '.2f'):>8} {_fmt(a.ms_ssim, '.4f'):>8} "
            f"{_fmt(a.enc_s and a.enc_s * 1e3, '.1f'):>9} "
            f"{_fmt(a.dec_s and a.dec_s * 1e3, '.1f'):>9}"
            + (f"  ({label})" if label and label != "quality" and not a.reference else "")
        )
    lines.append("")
    if result.bd:
        lines.append(f"Bjontegaard deltas vs {ANCHOR} (cubic fit; negative BD-rate = fewer bits)")
        lines.append(f"{'codec':<24} {'BD-rate %':>10} {'BD-PSNR dB':>11} {'enc s/img':>10}")
        for b in result.bd:
            name = f"{b.codec} [ref]" if b.reference else b.codec
            lines.append(
                f"{name:<24} {_fmt(b.bd_rate, '+.2f', 'n/a'):>10} "
                f"{_fmt(b.bd_psnr, '+.3f', 'n/a'):>11} {_fmt(b.enc_s, '.2f'):>10}"
            )
    elif ANCHOR not in cfg["codecs"]:
        lines.append(f"(no BD table: it needs {ANCHOR} among the codecs)")
    errors = result.errors
    if errors:
        lines.append("")
        lines.append(f"{len(errors)} of {len(result.rows)} measurements failed, e.g.:")
        for r in errors[:5]:
            lines.append(f"  {r.image} {r.codec} {_setting_str(r.setting)}: {r.error}")
    return "\n".join(lines)


def write_outputs(result: BenchResult, out: str | os.PathLike, curves: dict | None = None,
                  refs: list[dict] | None = None) -> None:
    """results.json (everything), results.csv (one row per measurement), rd.png (the plot)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        names = [fld for fld in Row.__dataclass_fields__]
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for r in result.rows:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
    if curves is None:
        curves = rd_curves(result.aggregates, result.config["n_images"])
    if refs is None:
        refs = []
        for a in result.aggregates:
            if a.reference:
                if not refs or refs[-1]["name"] != a.codec:
                    refs.append({"name": a.codec, "bpp": [], "psnr": []})
                refs[-1]["bpp"].append(a.bpp)
                refs[-1]["psnr"].append(a.psnr)
    plot_rd(curves, refs, out / "rd.png", title=_plot_title(result))


def _plot_title(result: BenchResult) -> str:
    return f"{Path(result.config['directory']).name}: {result.config['n_images']} images"


def plot_rd(curves: dict[str, tuple[Sequence[float], Sequence[float]]], refs: list[dict],
            path: str | os.PathLike, title: str = "") -> None:
    """PSNR against bpp, one line per codec; published curves dashed.  Lossless codecs have
    no finite PSNR, so they have no place on this plot (their bpp is in the table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for name, (r, p) in curves.items():
        ax.plot(r, p, marker="o", markersize=3, label=name,
                linewidth=2.5 if name.startswith("vaecodec") else 1.5)
    for c in refs:
        order = np.argsort(c["bpp"])
        ax.plot(np.asarray(c["bpp"])[order], np.asarray(c["psnr"])[order], linestyle="--",
                marker="x", markersize=3, label=f"{c['name']} (published)")
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB, 8-bit RGB)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""What a bench run produces and how its per-file measurements become curves and BD figures,
kept apart from how the measurements are made and from how they are shown: the run fills
these records and the report reads them, so both agree on one definition of a point of a
curve (the mean over the images that coded without error, complete points only) and neither
has to import the other.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np

from .bdrate import bd_psnr, bd_rate
from .codecs import ANCHOR, CODECS, Setting


@dataclass
class Row:
    """One image coded by one codec at one setting: the unit of results.csv."""

    image: str
    width: int
    height: int
    codec: str
    setting: Setting
    bytes: int | None = None
    bpp: float | None = None
    psnr: float | None = None
    ms_ssim: float | None = None
    enc_s: float | None = None
    dec_s: float | None = None
    error: str | None = None


@dataclass
class Aggregate:
    """One point of a codec's curve: means over the images that coded without error."""

    codec: str
    setting: Setting
    n_images: int
    bpp: float | None
    psnr: float | None
    ms_ssim: float | None
    enc_s: float | None
    dec_s: float | None
    reference: bool = False


@dataclass
class BDEntry:
    """Bjontegaard deltas of one curve against the anchor."""

    codec: str
    anchor: str
    bd_rate: float | None
    bd_psnr: float | None
    reference: bool = False
    #: Mean wall seconds to encode one image, over the curve's settings: what a point of
    #: the curve costs, so a slow preset's gain can be weighed against its time.
    enc_s: float | None = None


@dataclass
class BenchResult:
    """Everything a run measured, in the shape results.json is written."""

    config: dict[str, Any]
    machine: dict[str, Any]
    rows: list[Row]
    aggregates: list[Aggregate]
    bd: list[BDEntry]
    table: str = ""

    @property
    def errors(self) -> list[Row]:
        """Rows that failed; a caller (the CLI) can turn them into a non-zero exit code."""
        return [r for r in self.rows if r.error]

    def to_json(self) -> dict[str, Any]:
        return json_safe(
            {
                "config": self.config,
                "machine": self.machine,
                "aggregates": [asdict(a) for a in self.aggregates],
                "bd": [asdict(b) for b in self.bd],
                "rows": [asdict(r) for r in self.rows],
            }
        )


def json_safe(obj: Any) -> Any:
    """inf/NaN become null: strict JSON has no spelling for them (PNG's PSNR is infinite)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def aggregate(rows: list[Row], selected: list[str], settings: dict[str, tuple]) -> list[Aggregate]:
    """One point per selected codec and setting, in that order: the means over its rows."""
    out = []
    for name in selected:
        for s in settings[name]:
            ok = [r for r in rows if r.codec == name and r.setting == s and not r.error]
            out.append(Aggregate(
                name, s, len(ok),
                _mean(r.bpp for r in ok), _mean(r.psnr for r in ok),
                _mean(r.ms_ssim for r in ok) if all(r.ms_ssim is not None for r in ok) else None,
                _mean(r.enc_s for r in ok), _mean(r.dec_s for r in ok),
            ))
    return out


def rd_curves(aggs: list[Aggregate], n_images: int) -> dict[str, tuple[list[float], list[float]]]:
    """Mean rate-PSNR curve per lossy codec, sorted by rate; only complete points count."""
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for a in aggs:
        if a.reference or CODECS[a.codec].lossless or a.n_images != n_images or a.bpp is None:
            continue
        curves.setdefault(a.codec, ([], []))
        curves[a.codec][0].append(a.bpp)
        curves[a.codec][1].append(a.psnr)
    for name, (r, p) in curves.items():
        order = np.argsort(r)
        curves[name] = ([r[i] for i in order], [p[i] for i in order])
    return curves


def bd_table(curves: dict, refs: list[dict], aggs: list[Aggregate] = ()) -> list[BDEntry]:
    """Every measured curve, then every published one, against the anchor's curve; empty
    when the anchor was not measured. ``aggs`` give each curve its encode seconds."""
    if ANCHOR not in curves:
        return []
    r0, p0 = curves[ANCHOR]
    entries = [
        BDEntry(name, ANCHOR, bd_rate(r0, p0, r, p), bd_psnr(r0, p0, r, p),
                enc_s=_mean(a.enc_s for a in aggs if a.codec == name and not a.reference))
        for name, (r, p) in curves.items()
        if name != ANCHOR
    ]
    entries += [
        BDEntry(c["name"], ANCHOR, bd_rate(r0, p0, c["bpp"], c["psnr"]),
                bd_psnr(r0, p0, c["bpp"], c["psnr"]), reference=True)
        for c in refs
    ]
    return entries

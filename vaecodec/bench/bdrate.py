"""The Bjontegaard metrics (VCEG-M33), the one number codec comparisons are published in,
apart from everything else the bench does: pure numpy on plain sequences, with no knowledge
of codecs or of the bench's results, so that the benchmark scripts (the integer path, the
learning curve) compare their own curves with exactly the maths of ``vaecodec bench``'s BD
table, and the maths can be tested against known answers on its own.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _fit_range(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray) -> float | None:
    """Mean of (fit2 - fit1) over the overlapping x range, with y fitted as a cubic in x.

    The core of both Bjontegaard metrics (VCEG-M33): they differ only in which axis is x.
    Fewer than 4 points get a lower-degree fit rather than no answer.
    """
    lo = max(x1.min(), x2.min())
    hi = min(x1.max(), x2.max())
    if not hi > lo:
        return None
    i1 = np.polyint(np.polyfit(x1, y1, min(3, len(x1) - 1)))
    i2 = np.polyint(np.polyfit(x2, y2, min(3, len(x2) - 1)))
    area1 = np.polyval(i1, hi) - np.polyval(i1, lo)
    area2 = np.polyval(i2, hi) - np.polyval(i2, lo)
    return float((area2 - area1) / (hi - lo))


def _curve(rate: Sequence[float], dist: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rate, dtype=np.float64)
    d = np.asarray(dist, dtype=np.float64)
    if r.shape != d.shape or r.ndim != 1:
        raise ValueError("rate and PSNR must be 1-D sequences of the same length")
    keep = np.isfinite(r) & np.isfinite(d) & (r > 0)
    return r[keep], d[keep]


def bd_rate(
    rate1: Sequence[float], psnr1: Sequence[float], rate2: Sequence[float], psnr2: Sequence[float]
) -> float | None:
    """Bjontegaard delta rate of curve 2 against anchor curve 1, in percent.

    Negative means curve 2 needs fewer bits for the same PSNR (-50 = half the bits).  Log-rate
    is fitted as a cubic of PSNR and the fits are averaged over the PSNR range both curves
    cover.  None when the curves do not overlap or have fewer than 2 usable points.
    """
    r1, p1 = _curve(rate1, psnr1)
    r2, p2 = _curve(rate2, psnr2)
    if len(r1) < 2 or len(r2) < 2:
        return None
    diff = _fit_range(p1, np.log(r1), p2, np.log(r2))
    return None if diff is None else float((math.exp(diff) - 1.0) * 100.0)


def bd_psnr(
    rate1: Sequence[float], psnr1: Sequence[float], rate2: Sequence[float], psnr2: Sequence[float]
) -> float | None:
    """Bjontegaard delta PSNR of curve 2 against anchor curve 1, in dB (positive = better).

    PSNR is fitted as a cubic of log-rate and averaged over the log-rate range both curves
    cover.  None when the curves do not overlap or have fewer than 2 usable points.
    """
    r1, p1 = _curve(rate1, psnr1)
    r2, p2 = _curve(rate2, psnr2)
    if len(r1) < 2 or len(r2) < 2:
        return None
    return _fit_range(np.log(r1), p1, np.log(r2), p2)

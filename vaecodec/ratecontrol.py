"""Rate control: the quality that meets a file-size or PSNR target.

Quality is continuous and both the log of the file size and the PSNR are close to linear in
it (the rate levels form a geometric lambda grid), so a secant search inside a shrinking
bracket lands in a few tries. Each try only re-quantizes and entropy-codes one analysis
(``codec.code_at``); the analysis transform runs once per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

from .errors import VaecodecError

R = TypeVar("R")

#: Typical slopes, for the second try before there are two points to draw a line through.
LOG_SIZE_PER_QUALITY = 0.025
PSNR_PER_QUALITY = 0.09
MAX_TRIES = 10


class TargetError(VaecodecError):
    """The target cannot be met by any quality."""


@dataclass
class Search(Generic[R]):
    """All tries, so a caller can report how the choice was made."""

    tries: list[tuple[float, float, R]] = field(default_factory=list)
    quality: float = 0.0
    value: float = 0.0
    result: R | None = None


def fit_size(code: Callable[[float], R], size: Callable[[R], int], limit: int,
             tolerance: float = 0.015, first: float = 50.0) -> Search[R]:
    """The highest-quality result whose size is at most ``limit`` bytes, aiming at
    ``limit * (1 - tolerance)`` or above. Raises TargetError if quality 0 is still larger."""
    if limit <= 0:
        raise TargetError(f"size target must be positive, got {limit}")
    s = _search(lambda q: _measure(code, lambda r: math.log(size(r)), q),
                lo=math.log(limit) + math.log1p(-tolerance), hi=math.log(limit),
                slope=LOG_SIZE_PER_QUALITY, first=first)
    ok = [t for t in s.tries if t[1] <= math.log(limit) + 1e-12]
    if not ok:
        smallest = min(s.tries, key=lambda t: t[0])
        raise TargetError(
            f"cannot fit in {limit} bytes: even quality {smallest[0]:g} gives "
            f"{size(smallest[2])} bytes")
    best = max(ok, key=lambda t: (t[1], t[0]))
    s.quality, s.value, s.result = best[0], float(size(best[2])), best[2]
    return s


def fit_psnr(code: Callable[[float], R], psnr: Callable[[R], float], target: float,
             tolerance: float = 0.05, first: float = 50.0) -> Search[R]:
    """The result whose PSNR is closest to ``target`` (within ``tolerance`` dB when the
    model's range allows; else the nearest end of the range)."""
    s = _search(lambda q: _measure(code, psnr, q), lo=target - tolerance,
                hi=target + tolerance, slope=PSNR_PER_QUALITY, first=first)
    best = min(s.tries, key=lambda t: (abs(t[1] - target), -t[0]))
    s.quality, s.value, s.result = best
    return s


def _measure(code: Callable[[float], R], value: Callable[[R], float], q: float
             ) -> tuple[float, R]:
    r = code(q)
    return value(r), r


def _search(measure: Callable[[float], tuple[float, R]], lo: float, hi: float, slope: float,
            first: float) -> Search[R]:
    """Find q in [0, 100] with lo <= v(q) <= hi for an increasing v. Keeps the closest tries
    below and above the window as a bracket; steps by secant (regula falsi with a margin, so
    a curved v cannot stall one end), or by the typical slope before a second point exists.
    Stops early at the ends of the quality range when the window lies beyond them."""
    s: Search[R] = Search()
    below: tuple[float, float] | None = None  # (q, v) with v < lo
    above: tuple[float, float] | None = None  # (q, v) with v > hi
    aim = 0.5 * (lo + hi)
    q = first
    for _ in range(MAX_TRIES):
        v, r = measure(q)
        s.tries.append((q, v, r))
        if lo <= v <= hi:
            break
        if v < lo:
            below = (q, v) if below is None or q > below[0] else below
            if q >= 100.0:
                break
        else:
            above = (q, v) if above is None or q < above[0] else above
            if q <= 0.0:
                break
        if below and above:
            (q0, v0), (q1, v1) = below, above
            if q1 - q0 < 1e-3:
                break
            t = (aim - v0) / (v1 - v0) if v1 != v0 else 0.5
            m = 0.1 * (q1 - q0)
            q = min(max(q0 + t * (q1 - q0), q0 + m), q1 - m)
        else:
            k = slope
            if len(s.tries) >= 2:
                (qa, va, _), (qb, vb, _) = s.tries[-2], s.tries[-1]
                if qa != qb and (vb - va) / (qb - qa) > 0:
                    k = (vb - va) / (qb - qa)
            q = min(100.0, max(0.0, q + (aim - v) / k))
    return s

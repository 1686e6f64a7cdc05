"""The measures every figure of the project is reported in: PSNR and the rate-distortion cost.

One definition for the CLI, the encoder's search, training, ``vaecodec bench``, the
benchmarks and the tests, so that a PSNR printed by one and checked by another is the same
number. Nothing here imports the rest of the package (or torch): any module may use it.
"""

from __future__ import annotations

import math
from typing import Any

#: 8-bit images: the peak of PSNR, and the scale of the MSE in ``rd_cost``.
PEAK = 255


def mse(a: Any, b: Any) -> float:
    """Mean squared error over every sample, in 8-bit levels squared. Pillow images are
    compared as RGB (the codec's pixels; alpha is lossless and does not count); arrays (or
    anything numpy reads) as they are."""
    import numpy as np

    x, y = (np.asarray(v.convert("RGB") if hasattr(v, "convert") else v, dtype=np.float64)
            for v in (a, b))
    if x.shape != y.shape:
        raise ValueError(f"cannot compare images of shapes {x.shape} and {y.shape}")
    return float(np.mean((x - y) ** 2))


def psnr_from_mse(err: float, peak: float = PEAK) -> float:
    """PSNR in dB of an MSE (of samples with the given peak); inf when it is 0."""
    return math.inf if err == 0 else 10 * math.log10(peak ** 2 / err)


def psnr(a: Any, b: Any) -> float:
    """PSNR in dB of two 8-bit images over all channels (inf when identical); see ``mse``."""
    return psnr_from_mse(mse(a, b))


def rd_cost(lam: Any, err: Any, bpp: Any) -> Any:
    """The training objective: ``lam`` * MSE (8-bit levels squared) + bits per pixel. The
    encoder's search compares candidates with it and training minimises it, so both must
    weigh rate against distortion the same way. Works on floats and on tensors alike."""
    return lam * err + bpp

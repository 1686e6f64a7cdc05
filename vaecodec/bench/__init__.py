"""Rate, quality and speed of vaecodec next to the classic image codecs.

The benchmark answers one question: at a given file size, how good does the image look, and
how long does it take?  Every codec is measured the same way, on complete files:

* bpp = 8 * len(file bytes) / (width * height), so container headers count against every codec;
* PSNR on the 8-bit RGB image that a user of the decoder would get back;
* MS-SSIM on the same image as floats in [0, 1] (`pytorch_msssim`, default window);
* wall-clock time of encode and decode, each including (de)serialisation to bytes.

Codecs live in a small registry (:data:`CODECS`): a new codec is one :class:`Codec` entry,
not a new branch in the loop.  Curves are averaged per setting over the images (mean bpp,
mean of per-image PSNR), which is how published Kodak numbers are made, and are compared with
the Bjontegaard metrics (VCEG-M33) against JPEG.

The package is cut by job, each module importing only the ones below it: ``codecs`` (the
registry), ``bdrate`` (the Bjontegaard maths), ``results`` (the records and how rows become
curves), ``measure`` (one measurement, in a worker or not), ``report`` (table, JSON, CSV,
plot) and ``run`` (a whole run and its record).  This module only gathers the public names,
so ``from vaecodec.bench import run_bench`` and ``bench.CODECS`` work as they always have.

torch (through vaecodec and pytorch_msssim), matplotlib and tqdm are imported inside the
functions that need them, so importing this package, or `vaecodec --help`, stays fast.
"""

from __future__ import annotations

from ..metrics import psnr
from .bdrate import bd_psnr, bd_rate
from .codecs import (
    ANCHOR,
    AVIF_QUALITIES,
    CODECS,
    JP2_RATIOS,
    JPEG_QUALITIES,
    JXL_QUALITIES,
    VAECODEC_QUALITIES,
    WEBP_QUALITIES,
    Codec,
    Setting,
    available_codecs,
)
from .measure import MS_SSIM_MIN_SIDE, ms_ssim
from .report import format_table, plot_rd, write_outputs
from .results import Aggregate, BDEntry, BenchResult, Row
from .run import load_reference, main, run_bench

# Internals the tests call directly, under the names they had in the single-module bench.
from .codecs import select_codecs as _select_codecs
from .measure import measure_one as _measure

__all__ = [
    "VAECODEC_QUALITIES",
    "Codec",
    "CODECS",
    "Row",
    "Aggregate",
    "BDEntry",
    "BenchResult",
    "available_codecs",
    "bd_rate",
    "bd_psnr",
    "run_bench",
    "main",
]

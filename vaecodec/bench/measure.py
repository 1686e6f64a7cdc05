"""One measurement: one image through one codec at one setting, the same code in the main
process and in a spawned worker.  It holds the worker's state (its share of the cores) next
to the only code that reads it, so that the thread budget reaches torch however torch first
gets imported (vaecodec's model or MS-SSIM), and it is the one place that decides how every
codec is timed and scored: bytes of the complete file, PSNR on the 8-bit RGB image a user
gets back, MS-SSIM on the same image as floats in [0, 1].
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from ..metrics import psnr
from .codecs import CODECS, Setting
from .results import Row

#: pytorch_msssim downsamples 4 times with an 11-tap window and asserts the smaller side is
#: larger than (11 - 1) * 2**4; smaller images get no MS-SSIM rather than a crash.
MS_SSIM_MIN_SIDE = 161

_worker_threads: int | None = None


def _torch() -> Any:
    """Import torch on first use, applying the worker's thread budget if there is one."""
    import torch

    if _worker_threads is not None and torch.get_num_threads() != _worker_threads:
        torch.set_num_threads(_worker_threads)
    return torch


def init_worker(codec_names: Sequence[str], threads: int) -> None:
    """Per-process set-up: split the cores between workers, then warm the codecs up.

    Warming up loads vaecodec's model once per process (the API caches it), so no measured
    encode pays for it.
    """
    global _worker_threads
    _worker_threads = threads
    warm_up(codec_names)


def warm_up(codec_names: Iterable[str]) -> None:
    """Code a tiny image with each codec once, so that no measurement pays for first-use
    costs (model loading, plugin registration)."""
    tiny = Image.new("RGB", (64, 64), (128, 96, 64))
    for name in codec_names:
        codec = CODECS[name]
        if name.startswith("vaecodec"):
            _torch()
        try:
            codec.decode(codec.encode(tiny, codec.settings[len(codec.settings) // 2]))
        except Exception:
            pass  # the measured rows will record the error where it matters


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    """MS-SSIM of two uint8 RGB images; None where the image is too small to measure."""
    h, w = a.shape[:2]
    if min(h, w) < MS_SSIM_MIN_SIDE:
        return None
    if np.array_equal(a, b):
        return 1.0
    torch = _torch()
    from pytorch_msssim import ms_ssim as _ms_ssim

    def t(x: np.ndarray) -> Any:
        return torch.from_numpy(np.array(x, copy=True)).permute(2, 0, 1)[None].float() / 255.0

    with torch.no_grad():
        return float(_ms_ssim(t(a), t(b), data_range=1.0, size_average=True))


@functools.lru_cache(maxsize=2)
def _load(path: str) -> tuple[Image.Image, np.ndarray]:
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    return rgb, np.asarray(rgb)


def measure_one(path: str, codec_name: str, setting: Setting) -> Row:
    """Encode, decode, time and score one image; a failure is recorded in the row's `error`
    rather than raised, so one bad file does not sink an hour-long run."""
    img, ref = _load(path)
    w, h = img.size
    row = Row(Path(path).name, w, h, codec_name, setting)
    codec = CODECS[codec_name]
    try:
        t0 = time.perf_counter()
        data = codec.encode(img, setting)
        t1 = time.perf_counter()
        out = codec.decode(data)
        t2 = time.perf_counter()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"encode returned {type(data).__name__}, not bytes")
        if out.size != img.size:
            raise ValueError(f"decoded size {out.size} != original {img.size}")
        dec = np.asarray(out if out.mode == "RGB" else out.convert("RGB"))
        row.bytes = len(data)
        row.bpp = 8.0 * len(data) / (w * h)
        row.enc_s = t1 - t0
        row.dec_s = t2 - t1
        row.psnr = psnr(ref, dec)
        row.ms_ssim = ms_ssim(ref, dec)
    except Exception as exc:  # one bad file must not sink an hour-long run
        row.error = f"{type(exc).__name__}: {exc}"
    return row


def best_of(f: Callable[[], Any], repeat: int, warm_up: bool = False) -> tuple[float, Any]:
    """The shortest wall time of `repeat` calls of `f` (after one untimed call with
    `warm_up`), and what the last call returned: the speed benchmarks' figure, as the
    least disturbed run on a shared machine."""
    out = f() if warm_up else None
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t0)
    return min(times), out

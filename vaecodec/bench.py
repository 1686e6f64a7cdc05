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

torch (through vaecodec and pytorch_msssim), matplotlib and tqdm are imported inside the
functions that need them, so importing this module, or `vaecodec --help`, stays fast.
"""

from __future__ import annotations

import concurrent.futures
import csv
import functools
import io
import json
import math
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError, features

from . import machine
from .metrics import psnr

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

#: Default vaecodec sweep: 7 points over the whole 0..100 quality range.
VAECODEC_QUALITIES: tuple[float, ...] = (0, 15, 30, 45, 60, 80, 100)
#: Pillow quality sweeps.  Below 5 JPEG and WebP fall apart; above 95 they only add bytes.
JPEG_QUALITIES: tuple[float, ...] = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
WEBP_QUALITIES: tuple[float, ...] = JPEG_QUALITIES
AVIF_QUALITIES: tuple[float, ...] = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90)
#: JPEG XL quality (libjxl maps it to a Butteraugli distance: 90 is cjxl's default, d = 1).
JXL_QUALITIES: tuple[float, ...] = JPEG_QUALITIES
#: JPEG 2000 compression ratios against 24-bit RGB (bpp = 24 / ratio: 0.125 .. 3 bpp).
#: Rates, not dB targets, so the sweep covers the same bpp range on every image.
JP2_RATIOS: tuple[float, ...] = (192, 96, 64, 48, 32, 24, 16, 12, 8)

#: The anchor of the BD table: the codec everyone knows.
ANCHOR = "jpeg"

#: pytorch_msssim downsamples 4 times with an 11-tap window and asserts the smaller side is
#: larger than (11 - 1) * 2**4; smaller images get no MS-SSIM rather than a crash.
MS_SSIM_MIN_SIDE = 161

Setting = float | None
"""A codec setting: quality (or ratio for JPEG 2000); None for codecs with no knob (PNG)."""


# --------------------------------------------------------------------------------------------
# the registry


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Codec:
    """One entry of the registry: everything the loop needs to measure a codec.

    `encode` must return the complete file a user would store, so that bpp counts every byte;
    `decode` must return what a user would see (an RGB image of the original size).
    """

    name: str
    settings: tuple[Setting, ...]
    encode: Callable[[Image.Image, Setting], bytes]
    decode: Callable[[bytes], Image.Image]
    lossless: bool = False
    available: Callable[[], bool] = _always
    setting_label: str = "quality"
    description: str = ""
    requires: str = "Pillow built with this format"
    #: False for settings too slow for the default run: they run only when named (--codecs).
    default: bool = True


def _pillow_save(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _pillow_decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGB")


def _jpeg_encode(img: Image.Image, q: Setting) -> bytes:
    # optimize=True: optimal Huffman tables cost nothing at decode time, and a strong anchor
    # keeps vaecodec's BD-rate honest.
    return _pillow_save(img, "JPEG", quality=int(round(q)), optimize=True)


def _png_encode(img: Image.Image, q: Setting) -> bytes:
    return _pillow_save(img, "PNG", optimize=True)


def _webp_encode(img: Image.Image, q: Setting) -> bytes:
    return _pillow_save(img, "WEBP", quality=int(round(q)), method=6)


def _avif_encode(img: Image.Image, q: Setting, subsampling: str = "4:2:0") -> bytes:
    # 4:2:0 is what most AVIF files in the wild use (and libavif's default); 4:4:4 keeps
    # full-resolution chroma, as vaecodec does, so both layouts are in the race.
    return _pillow_save(img, "AVIF", quality=int(round(q)), subsampling=subsampling)


def _jxl_plugin() -> bool:
    """Register JPEG XL with Pillow (pillow-jxl-plugin: libjxl through Rust bindings)."""
    try:
        import pillow_jxl  # noqa: F401  (registers the format on import)
    except ImportError:
        return False
    return True


def _jxl_encode(img: Image.Image, q: Setting) -> bytes:
    # effort 7 is cjxl's default; lossless_jpeg=False: the bench hands over pixels, never
    # a JPEG to transcode.
    _jxl_plugin()
    return _pillow_save(img, "JXL", quality=int(round(q)), effort=7, lossless_jpeg=False)


def _jxl_decode(data: bytes) -> Image.Image:
    _jxl_plugin()
    return _pillow_decode(data)


def _jp2_encode(img: Image.Image, ratio: Setting) -> bytes:
    # irreversible=True: the 9/7 wavelet, the lossy mode of JPEG 2000 (the default 5/3 is meant
    # for lossless).  no_jp2=True: a bare codestream (.j2k), the smallest complete file.
    return _pillow_save(
        img,
        "JPEG2000",
        quality_mode="rates",
        quality_layers=[float(ratio)],
        irreversible=True,
        no_jp2=True,
    )


def _vaecodec_encode(img: Image.Image, q: Setting, effort: int = 0, rdoq: bool = True) -> bytes:
    import vaecodec

    return vaecodec.encode(img, quality=float(q), effort=effort, rdoq=rdoq)


def _vaecodec_decode(data: bytes) -> Image.Image:
    # The same path as `vaecodec decode`, so the benchmark measures what users get.
    import vaecodec

    return vaecodec.decode(data)


def _vaecodec_available() -> bool:
    # Without weights every measurement would fail: leave vaecodec out of the default run.
    try:
        import vaecodec
        from vaecodec import weights

        has_api = callable(getattr(vaecodec, "encode", None)) and callable(
            getattr(vaecodec, "decode", None)
        )
        return has_api and weights.default_weights_path().is_file()
    except Exception:
        return False


def _pillow_has(feature: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return bool(features.check(feature))
        except Exception:
            return False

    return check


_REGISTRY: tuple[Codec, ...] = (
    Codec("vaecodec", VAECODEC_QUALITIES, _vaecodec_encode, _vaecodec_decode,
          available=_vaecodec_available, description="this project (.vae)",
          requires="vaecodec's API and its weights file in models/"),
    *(Codec(f"vaecodec-e{e}", VAECODEC_QUALITIES, functools.partial(_vaecodec_encode, effort=e),
            _vaecodec_decode, available=_vaecodec_available, default=False,
            description=f"this project, encoder search --effort {e}",
            requires="vaecodec's API and its weights file in models/") for e in (1, 2, 3, 4)),
    Codec("vaecodec-nearest", VAECODEC_QUALITIES, functools.partial(_vaecodec_encode, rdoq=False),
          _vaecodec_decode, available=_vaecodec_available, default=False,
          description="this project, --no-rdoq (latent rounded to nearest)",
          requires="vaecodec's API and its weights file in models/"),
    Codec("jpeg", JPEG_QUALITIES, _jpeg_encode, _pillow_decode,
          available=_pillow_has("jpg"), description="Pillow/libjpeg, optimize=True, 4:2:0"),
    Codec("png", (None,), _png_encode, _pillow_decode, lossless=True,
          available=_pillow_has("zlib"), description="Pillow/zlib, optimize=True (lossless)"),
    Codec("webp", WEBP_QUALITIES, _webp_encode, _pillow_decode,
          available=_pillow_has("webp"), description="Pillow/libwebp, method=6"),
    Codec("avif", AVIF_QUALITIES, _avif_encode, _pillow_decode,
          available=_pillow_has("avif"), description="Pillow/libavif, default speed, 4:2:0"),
    Codec("avif444", AVIF_QUALITIES, functools.partial(_avif_encode, subsampling="4:4:4"),
          _pillow_decode, available=_pillow_has("avif"),
          description="Pillow/libavif, default speed, 4:4:4 (full-resolution chroma)"),
    Codec("jxl", JXL_QUALITIES, _jxl_encode, _jxl_decode, available=_jxl_plugin,
          description="pillow-jxl-plugin/libjxl, effort 7",
          requires="the pillow-jxl-plugin package (a dependency of vaecodec)"),
    Codec("jp2", JP2_RATIOS, _jp2_encode, _pillow_decode, available=_pillow_has("jpg_2000"),
          setting_label="ratio", description="Pillow/OpenJPEG, 9/7 wavelet, rate = 24/ratio bpp"),
)

#: All known codecs by name, in table order.
CODECS: dict[str, Codec] = {c.name: c for c in _REGISTRY}


def available_codecs() -> list[str]:
    """Names of the codecs the default run measures: those this machine can run (so it never
    fails on a plugin), less the slow settings that run only when named."""
    return [name for name, c in CODECS.items() if c.default and c.available()]


# --------------------------------------------------------------------------------------------
# metrics


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


# --------------------------------------------------------------------------------------------
# results


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
        return _finite(
            {
                "config": self.config,
                "machine": self.machine,
                "aggregates": [asdict(a) for a in self.aggregates],
                "bd": [asdict(b) for b in self.bd],
                "rows": [asdict(r) for r in self.rows],
            }
        )


def _finite(obj: Any) -> Any:
    """inf/NaN become null: strict JSON has no spelling for them (PNG's PSNR is infinite)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# one measurement (runs in the main process or a worker)

_worker_threads: int | None = None


def _torch() -> Any:
    """Import torch on first use, applying the worker's thread budget if there is one."""
    import torch

    if _worker_threads is not None and torch.get_num_threads() != _worker_threads:
        torch.set_num_threads(_worker_threads)
    return torch


def _init_worker(codec_names: Sequence[str], threads: int) -> None:
    """Per-process set-up: split the cores between workers, then warm the codecs up.

    Warming up loads vaecodec's model once per process (the API caches it), so no measured
    encode pays for it.
    """
    global _worker_threads
    _worker_threads = threads
    _warm_up(codec_names)


def _warm_up(codec_names: Iterable[str]) -> None:
    tiny = Image.new("RGB", (64, 64), (128, 96, 64))
    for name in codec_names:
        codec = CODECS[name]
        if name.startswith("vaecodec"):
            _torch()
        try:
            codec.decode(codec.encode(tiny, codec.settings[len(codec.settings) // 2]))
        except Exception:
            pass  # the measured rows will record the error where it matters


@functools.lru_cache(maxsize=2)
def _load(path: str) -> tuple[Image.Image, np.ndarray]:
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    return rgb, np.asarray(rgb)


def _measure(path: str, codec_name: str, setting: Setting) -> Row:
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


# --------------------------------------------------------------------------------------------
# the run


def _parse_list(value: str | Sequence[Any] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value]


def _select_codecs(codecs: str | Sequence[str] | None) -> list[str]:
    names = _parse_list(codecs)
    if names is None:
        return available_codecs()
    if not names:
        raise ValueError("no codec given")
    unknown = [n for n in names if n.lower() not in CODECS]
    if unknown:
        raise ValueError(
            f"unknown codec {', '.join(map(repr, unknown))}; known codecs: {', '.join(CODECS)}"
        )
    picked = [n for n in CODECS if n in {x.lower() for x in names}]  # registry order, no dups
    for n in picked:
        if not CODECS[n].available():
            raise ValueError(f"codec {n} is not available here: it needs {CODECS[n].requires}")
    return picked


def _parse_qualities(qualities: str | Sequence[float] | None) -> tuple[float, ...]:
    items = _parse_list(qualities)
    if items is None:
        return VAECODEC_QUALITIES
    try:
        values = [float(q) for q in items]
    except ValueError:
        raise ValueError(f"qualities must be numbers, got {qualities!r}") from None
    if not values or any(not 0 <= q <= 100 for q in values):
        raise ValueError(f"qualities must be numbers in 0..100, got {qualities!r}")
    return tuple(dict.fromkeys(values))


def _find_images(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ValueError(f"not a directory: {directory}")
    images = []
    for p in sorted(directory.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        try:
            with Image.open(p) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError):
            continue  # READMEs, licences and such live next to data sets
        images.append(p)
    if not images:
        raise ValueError(f"no images Pillow can read in {directory}")
    return images


def load_reference(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[dict]:
    """Read published curves: a list of {"name", "bpp", "psnr"[, "ms-ssim"]} (or one such
    object, or a CompressAI results file with the lists under "results")."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    curves: list[dict] = []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read reference {path}: {exc}") from None
        for item in doc if isinstance(doc, list) else [doc]:
            data = item.get("results", item) if isinstance(item, dict) else None
            if not isinstance(data, dict) or "bpp" not in data or "psnr" not in data:
                raise ValueError(f"{path}: each reference needs 'name', 'bpp' and 'psnr' lists")
            bpp, ps = list(map(float, data["bpp"])), list(map(float, data["psnr"]))
            if len(bpp) != len(ps) or not bpp:
                raise ValueError(f"{path}: 'bpp' and 'psnr' must be non-empty, same length")
            ms = data.get("ms-ssim", data.get("ms_ssim"))
            curves.append({
                "name": str(item.get("name", Path(path).stem)),
                "bpp": bpp,
                "psnr": ps,
                "ms_ssim": list(map(float, ms)) if ms and len(ms) == len(bpp) else None,
                "source": item.get("source"),
                "file": str(path),
            })
    return curves


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _aggregate(rows: list[Row], selected: list[str], settings: dict[str, tuple]) -> list[Aggregate]:
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


def _curves(aggs: list[Aggregate], n_images: int) -> dict[str, tuple[list[float], list[float]]]:
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


def _bd_table(curves: dict, refs: list[dict]) -> list[BDEntry]:
    if ANCHOR not in curves:
        return []
    r0, p0 = curves[ANCHOR]
    entries = [
        BDEntry(name, ANCHOR, bd_rate(r0, p0, r, p), bd_psnr(r0, p0, r, p))
        for name, (r, p) in curves.items()
        if name != ANCHOR
    ]
    entries += [
        BDEntry(c["name"], ANCHOR, bd_rate(r0, p0, c["bpp"], c["psnr"]),
                bd_psnr(r0, p0, c["bpp"], c["psnr"]), reference=True)
        for c in refs
    ]
    return entries


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
        lines.append(f"{'codec':<24} {'BD-rate %':>10} {'BD-PSNR dB':>11}")
        for b in result.bd:
            name = f"{b.codec} [ref]" if b.reference else b.codec
            lines.append(
                f"{name:<24} {_fmt(b.bd_rate, '+.2f', 'n/a'):>10} "
                f"{_fmt(b.bd_psnr, '+.3f', 'n/a'):>11}"
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


def _machine(jobs: int, worker_threads: int | None) -> dict[str, Any]:
    torch_threads = worker_threads
    if torch_threads is None and "torch" in sys.modules:
        torch_threads = sys.modules["torch"].get_num_threads()
    libs = {}
    for feat in ("jpg", "webp", "avif", "jpg_2000", "zlib"):
        try:
            libs[feat] = features.version(feat)
        except Exception:
            libs[feat] = None
    return {
        **machine.info(),
        "jobs": jobs,
        "torch_threads_per_process": torch_threads,
        "versions": machine.versions(("vaecodec", "torch", "compressai", "pillow", "numpy",
                                      "pytorch_msssim", "pillow-jxl-plugin")),
        "pillow_libraries": libs,
    }


def run_bench(
    directory: str | os.PathLike,
    codecs: str | Sequence[str] | None = None,
    qualities: str | Sequence[float] | None = None,
    out: str | os.PathLike | None = None,
    jobs: int = 1,
    reference: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    progress: bool = True,
) -> BenchResult:
    """Measure every image in `directory` with every selected codec and setting.

    `codecs` and `qualities` take lists or comma-separated strings, as typed on the command
    line; `qualities` replaces the vaecodec sweep only.  With `jobs` > 1 the measurements run in
    that many spawned processes (spawn, not fork: forking a process that has started torch's
    thread pools can hang), with the cores split between them; timings then share the CPU.
    Bad arguments raise ValueError before any work starts; a failing measurement is recorded
    in its row (`BenchResult.errors`) so one bad file does not lose the rest of the run.
    """
    directory = Path(directory)
    selected = _select_codecs(codecs)
    vae_q = _parse_qualities(qualities)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    refs = load_reference(reference) if reference else []
    images = _find_images(directory)
    settings = {n: (vae_q if n.startswith("vaecodec") else CODECS[n].settings) for n in selected}
    tasks = [(str(p), n, s) for p in images for n in selected for s in settings[n]]

    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc="bench", unit="file", disable=not progress)
    rows: list[Row] = []
    worker_threads = None
    try:
        if jobs == 1:
            _warm_up(selected)
            for task in tasks:
                bar.set_postfix_str(f"{Path(task[0]).name} {task[1]}", refresh=False)
                rows.append(_measure(*task))
                bar.update()
        else:
            worker_threads = max(1, (os.cpu_count() or 1) // jobs)
            with concurrent.futures.ProcessPoolExecutor(
                max_workers=jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(selected, worker_threads),
            ) as pool:
                futures = {pool.submit(_measure, *t): i for i, t in enumerate(tasks)}
                done: dict[int, Row] = {}
                for fut in concurrent.futures.as_completed(futures):
                    done[futures[fut]] = fut.result()
                    bar.update()
                rows = [done[i] for i in range(len(tasks))]
    finally:
        bar.close()

    aggregates = _aggregate(rows, selected, settings)
    curves = _curves(aggregates, len(images))
    for c in refs:
        ms = c["ms_ssim"] or [None] * len(c["bpp"])
        aggregates += [
            Aggregate(c["name"], i + 1, 0, b, p, m, None, None, reference=True)
            for i, (b, p, m) in enumerate(zip(c["bpp"], c["psnr"], ms))
        ]
    config = {
        "directory": str(directory),
        "images": [p.name for p in images],
        "n_images": len(images),
        "codecs": selected,
        "settings": {n: list(settings[n]) for n in selected},
        "codec_notes": {n: CODECS[n].description for n in selected},
        "anchor": ANCHOR,
        "jobs": jobs,
        "reference": [c["file"] for c in refs],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command_line": sys.argv,
    }
    result = BenchResult(config, _machine(jobs, worker_threads), rows, aggregates,
                         _bd_table(curves, refs))
    result.table = format_table(result)
    if out is not None:
        write_outputs(result, out, curves, refs)
    return result


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
        curves = _curves(result.aggregates, result.config["n_images"])
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


def main(
    directory: str | os.PathLike,
    codecs: str | Sequence[str] | None = None,
    qualities: str | Sequence[float] | None = None,
    out: str | os.PathLike | None = None,
    jobs: int = 1,
    reference: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
) -> BenchResult:
    """The `vaecodec bench` command without the Click layer: run, print the table, return.

    Raises ValueError for bad arguments (the CLI maps it to a usage error); failed
    measurements are in the returned result's `errors` and in the printed table.
    """
    result = run_bench(directory, codecs=codecs, qualities=qualities, out=out, jobs=jobs,
                       reference=reference, progress=progress)
    echo(result.table)
    if out is not None:
        echo(f"\nwrote {Path(out) / 'results.json'}, results.csv, rd.png")
    return result

"""The codecs the benchmark races, as data rather than as branches in the loop: each is one
:class:`Codec` entry in :data:`CODECS` that says how to turn an image into the complete file
a user would store, how to get back what a user would see, which settings to sweep, and
whether this machine can run it at all.  Every codec-specific decision (Pillow parameters,
chroma layout, libjxl effort, the JPEG 2000 wavelet) stays here, so the measurement, the BD
maths and the report never tell one codec from another and a new codec is one entry, not an
edit in four places; the checks of what a run may ask for (codec names, the vaecodec sweep)
sit next to the names and sweeps they check.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from PIL import Image, features

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

Setting = float | None
"""A codec setting: quality (or ratio for JPEG 2000); None for codecs with no knob (PNG)."""


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


def _avif_encode(img: Image.Image, q: Setting, subsampling: str = "4:2:0",
                 speed: int | None = None) -> bytes:
    # 4:2:0 is what most AVIF files in the wild use (and libavif's default); 4:4:4 keeps
    # full-resolution chroma, as vaecodec does, so both layouts are in the race. speed None
    # is Pillow's default (6); 0 is avifenc -s 0, the slowest and smallest.
    extra = {} if speed is None else {"speed": speed}
    return _pillow_save(img, "AVIF", quality=int(round(q)), subsampling=subsampling, **extra)


def _jxl_plugin() -> bool:
    """Register JPEG XL with Pillow (pillow-jxl-plugin: libjxl through Rust bindings)."""
    try:
        import pillow_jxl  # noqa: F401  (registers the format on import)
    except ImportError:
        return False
    return True


def _jxl_encode(img: Image.Image, q: Setting, effort: int = 7) -> bytes:
    # effort 7 is cjxl's default, 9 its slowest regular preset (cjxl -e 9);
    # lossless_jpeg=False: the bench hands over pixels, never a JPEG to transcode.
    _jxl_plugin()
    return _pillow_save(img, "JXL", quality=int(round(q)), effort=effort, lossless_jpeg=False)


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
    Codec("avif-s0", AVIF_QUALITIES, functools.partial(_avif_encode, speed=0), _pillow_decode,
          available=_pillow_has("avif"), default=False,
          description="Pillow/libavif, speed 0 (slowest), 4:2:0"),
    Codec("avif444-s0", AVIF_QUALITIES,
          functools.partial(_avif_encode, subsampling="4:4:4", speed=0), _pillow_decode,
          available=_pillow_has("avif"), default=False,
          description="Pillow/libavif, speed 0 (slowest), 4:4:4"),
    Codec("jxl", JXL_QUALITIES, _jxl_encode, _jxl_decode, available=_jxl_plugin,
          description="pillow-jxl-plugin/libjxl, effort 7",
          requires="the pillow-jxl-plugin package (a dependency of vaecodec)"),
    Codec("jxl-e9", JXL_QUALITIES, functools.partial(_jxl_encode, effort=9), _jxl_decode,
          available=_jxl_plugin, default=False,
          description="pillow-jxl-plugin/libjxl, effort 9 (cjxl -e 9)",
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


def _parse_list(value: str | Sequence[Any] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value]


def select_codecs(codecs: str | Sequence[str] | None) -> list[str]:
    """The codecs a run measures, in registry order: all available defaults for None, else
    the named ones (a list or "a,b" as typed); ValueError for an unknown or unavailable one,
    so a bad name fails before any work starts."""
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


def parse_qualities(qualities: str | Sequence[float] | None) -> tuple[float, ...]:
    """The vaecodec sweep: the default for None, else the given numbers (a list or "a,b")
    without repeats; ValueError for anything outside 0..100."""
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

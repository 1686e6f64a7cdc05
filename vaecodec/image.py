"""Images in and out: any Pillow image -> (RGB pixels, alpha, mode), and atomic file writes.

Mode rules (documented in the README):
- RGB stays RGB; L stays L (coded as gray RGB, returned as L).
- RGBA keeps its alpha losslessly (deflate side data); LA likewise, returned as LA.
- P becomes RGBA when it has transparency, else RGB; 1 becomes L.
- 16-bit and 32-bit grayscale (I;16, I) are scaled to 8 bits (value / 257, rounded) -> L;
  F (float) is clipped to 0..255 -> L.
- CMYK, YCbCr, LAB, HSV become RGB by Pillow's conversion; RGBa/La (premultiplied) RGBA/LA.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .bitstream import TAG_EXIF, TAG_ICC, TAG_XMP
from .errors import FormatError, InputImageError

MAX_METADATA = 16 << 20        # inflated ICC / XMP size a decoder accepts (16 MiB)
_ICC_SPACE = {"RGB": b"RGB ", "RGBA": b"RGB ", "L": b"GRAY", "LA": b"GRAY"}
_EXIF_PREFIX = b"Exif\x00\x00"
_TIFF_HEADERS = (b"II*\x00", b"MM\x00*")
_XMP_KEY = "XML:com.adobe.xmp"  # the PNG iTXt keyword for XMP


@dataclass
class Planes:
    rgb: np.ndarray              # HxWx3 uint8
    alpha: np.ndarray | None     # HxW uint8
    mode: str                    # one of bitstream.MODES


def read_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Open and fully decode an image, turning every failure into one ``InputImageError``."""
    try:
        im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        im.load()
        return im
    except FileNotFoundError:
        raise InputImageError(f"no such file: {source}") from None
    except IsADirectoryError:
        raise InputImageError(f"is a directory: {source}") from None
    except Image.DecompressionBombError as e:
        raise InputImageError(str(e)) from None
    except (OSError, SyntaxError, ValueError) as e:
        name = "input" if isinstance(source, bytes) else str(source)
        raise InputImageError(f"cannot read {name} as an image ({e})") from None


def split(im: Image.Image) -> Planes:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    elif mode not in ("RGB", "L", "RGBA", "LA"):
        im = im.convert("RGB")
    mode = im.mode
    alpha = None
    if mode in ("RGBA", "LA"):
        alpha = np.asarray(im.getchannel("A"), dtype=np.uint8).copy()
    gray_or_rgb = im.convert("L" if mode in ("L", "LA") else "RGB")
    rgb = np.asarray(gray_or_rgb.convert("RGB"), dtype=np.uint8)
    return Planes(rgb=np.ascontiguousarray(rgb), alpha=alpha, mode=mode)


def merge(rgb: np.ndarray, alpha: np.ndarray | None, mode: str) -> Image.Image:
    im = Image.fromarray(rgb, "RGB")
    if mode in ("L", "LA"):
        im = im.convert("L")
    if mode in ("RGBA", "LA"):
        im.putalpha(Image.fromarray(alpha, "L"))
    return im


def pack_alpha(alpha: np.ndarray) -> bytes:
    return zlib.compress(alpha.tobytes(), 9)


def unpack_alpha(data: bytes, width: int, height: int) -> np.ndarray:
    """Inflate at most width*height bytes: a deflate bomb cannot allocate more."""
    d = zlib.decompressobj()
    try:
        raw = d.decompress(data, width * height)
    except zlib.error:
        raise FormatError("corrupt .vae file: the alpha plane does not inflate") from None
    if len(raw) != width * height or d.unconsumed_tail or not d.eof:
        raise FormatError("corrupt .vae file: the alpha plane has the wrong size")
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width).copy()


def metadata_chunks(im: Image.Image, mode: str, keep_metadata: bool = False
                    ) -> dict[bytes, bytes]:
    """Side chunks for the source image's metadata. The ICC profile is colour, not metadata,
    so it is always kept, but only when it describes the coded pixels: a CMYK profile on
    pixels converted to RGB would mis-colour them. EXIF and XMP only on request (like cwebp:
    they can carry GPS positions and camera serial numbers)."""
    side = {}
    icc = im.info.get("icc_profile")
    if isinstance(icc, bytes) and _icc_space(icc) == _ICC_SPACE.get(mode):
        side[TAG_ICC] = zlib.compress(icc, 9)
    if keep_metadata:
        exif = _exif_tiff(im.info.get("exif"))
        if exif:
            side[TAG_EXIF] = exif
        xmp = im.info.get("xmp")
        if isinstance(xmp, str):
            xmp = xmp.encode("utf-8")
        if isinstance(xmp, bytes) and xmp and _is_utf8(xmp):
            side[TAG_XMP] = zlib.compress(xmp, 9)
    return side


def metadata_info(side: dict[bytes, bytes], mode: str) -> dict[str, bytes]:
    """The stored metadata under Pillow's ``info`` keys, so that saving the decoded image
    (PNG, JPEG, WebP) writes it back. Checked before the pixels are decoded: a bad chunk
    costs nothing. Unknown side chunks are ignored."""
    info = {}
    if TAG_ICC in side:
        icc = _inflate(side[TAG_ICC], "ICC profile")
        if _icc_space(icc) != _ICC_SPACE.get(mode):
            raise FormatError(f"corrupt .vae file: the ICC profile is not one for {mode} pixels")
        info["icc_profile"] = icc
    if TAG_EXIF in side:
        if not side[TAG_EXIF].startswith(_TIFF_HEADERS):
            raise FormatError("corrupt .vae file: the EXIF chunk is not TIFF data")
        info["exif"] = _EXIF_PREFIX + side[TAG_EXIF]
    if TAG_XMP in side:
        xmp = _inflate(side[TAG_XMP], "XMP packet")
        if not _is_utf8(xmp):
            raise FormatError("corrupt .vae file: the XMP packet is not UTF-8")
        info["xmp"] = xmp
    return info


def _icc_space(icc: bytes) -> bytes | None:
    """The profile's data colour space (header bytes 16..20), None if it is no ICC profile."""
    if len(icc) < 128 or icc[36:40] != b"acsp":
        return None
    return icc[16:20]


def _exif_tiff(exif) -> bytes | None:
    """EXIF as the bare TIFF block (PNG's eXIf form), whatever container it came from."""
    if isinstance(exif, Image.Exif):
        exif = exif.tobytes()
    if not isinstance(exif, bytes):
        return None
    if exif.startswith(_EXIF_PREFIX):
        exif = exif[len(_EXIF_PREFIX):]
    return exif if exif.startswith(_TIFF_HEADERS) else None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _inflate(data: bytes, what: str, limit: int = MAX_METADATA) -> bytes:
    """Inflate at most ``limit`` bytes: a 1 KB deflate bomb cannot allocate gigabytes."""
    d = zlib.decompressobj()
    try:
        raw = d.decompress(data, limit)
    except zlib.error:
        raise FormatError(f"corrupt .vae file: the {what} does not inflate") from None
    if d.unconsumed_tail:
        raise FormatError(f"corrupt .vae file: the {what} inflates beyond "
                          f"{limit >> 20} MiB")
    if not d.eof:
        raise FormatError(f"corrupt .vae file: the {what} is truncated")
    return raw


def png_bytes(im: Image.Image) -> bytes:
    """PNG with the image's ICC profile, EXIF and XMP, whichever ``im.info`` has."""
    from PIL.PngImagePlugin import PngInfo

    opts = {}
    if im.info.get("icc_profile"):
        opts["icc_profile"] = im.info["icc_profile"]
    if im.info.get("exif"):
        opts["exif"] = im.info["exif"]
    xmp = im.info.get("xmp")
    if xmp:
        info = PngInfo()
        info.add_itxt(_XMP_KEY, xmp.decode("utf-8") if isinstance(xmp, bytes) else xmp,
                      zip=True)
        opts["pnginfo"] = info
    buf = io.BytesIO()
    im.save(buf, format="PNG", **opts)
    return buf.getvalue()


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Temp file in the same directory + rename: a failure or Ctrl-C never leaves a partial
    file, and an existing file is replaced only by a complete new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays of one shape (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)

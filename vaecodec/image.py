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
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import FormatError, InputImageError


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


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **({"icc_profile": im.info["icc_profile"]}
                                  if im.info.get("icc_profile") else {}))
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

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
import re
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
from PIL import Image

from .bitstream import TAG_EXIF, TAG_ICC, TAG_XMP
from .errors import FormatError, InputImageError, VaecodecError

MAX_METADATA = 16 << 20        # inflated ICC / XMP size a decoder accepts (16 MiB)
_ICC_SPACE = {"RGB": b"RGB ", "RGBA": b"RGB ", "L": b"GRAY", "LA": b"GRAY"}
_EXIF_PREFIX = b"Exif\x00\x00"
_TIFF_HEADERS = (b"II*\x00", b"MM\x00*")
_XMP_KEY = "XML:com.adobe.xmp"  # the PNG iTXt keyword for XMP
ORIENTATION = 0x0112            # the EXIF (TIFF) Orientation tag
#: EXIF Orientation -> the transposition that makes the pixels upright (as exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_XMP_ORIENTATION = (re.compile(rb'(tiff:Orientation=")[0-9]+(")'),
                    re.compile(rb"(<tiff:Orientation>)[0-9]+(</tiff:Orientation>)"))


@dataclass
class Planes:
    rgb: np.ndarray              # HxWx3 uint8
    alpha: np.ndarray | None     # HxW uint8
    mode: str                    # one of bitstream.MODES


#: Bytes per pixel an encode holds besides one tile's working memory: the decoded input
#: (Pillow keeps RGB in 4 bytes), its RGB array, and the latent (3 bytes a pixel).
ENCODE_BYTES_PER_PIXEL = 10
TILE_WORK_BYTES = 600 << 20


def read_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Open and fully decode an image, turning every failure into one ``InputImageError``.

    Pillow's own decompression-bomb guard (a warning above 89 MP, an error above 179 MP) is
    replaced by the codec's limits: the container's 65535 pixels a side, and the memory
    this machine has for coding that many pixels, checked before the pixels are decoded."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
        try:
            _check_size(im, source)
            im.load()
        except BaseException:
            im.close()
            raise
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


def _check_size(im: Image.Image, source: str | os.PathLike | bytes) -> None:
    from . import machine
    from .bitstream import MAX_SIDE

    w, h = im.size
    name = "the input" if isinstance(source, bytes) else str(source)
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        raise InputImageError(f"{name} is {w}x{h} pixels; a .vae file holds 1..{MAX_SIDE} "
                              "pixels a side")
    short = machine.memory_shortfall(w * h * ENCODE_BYTES_PER_PIXEL + TILE_WORK_BYTES)
    if short:
        raise InputImageError(f"not enough memory for {name} ({w}x{h}): encoding it " + short)


def frame_count(im: Image.Image) -> int:
    """How many pictures the file holds: frames of an animation, pages of a TIFF. A camera
    JPEG whose MPO extension carries preview images is one picture, and so is a PSD, whose
    first frame is the composite of its layers."""
    n = int(getattr(im, "n_frames", 1) or 1)
    if im.format == "PSD":
        return 1
    if im.format == "MPO":
        try:
            entries = im.mpinfo[0xB002]
            n = sum(1 for e in entries if "Thumbnail" not in str(e["Attribute"]["MPType"]))
        except (AttributeError, KeyError, TypeError):
            return 1
        return max(n, 1)
    return n


def prepare(im: Image.Image, frame: int | None = None) -> Image.Image:
    """The one picture a ``.vae`` file will hold: the chosen frame (an animation or a
    multi-page file is refused without one rather than cut to its first frame), upright.

    The EXIF Orientation is applied to the pixels, as ImageOps.exif_transpose and avifenc
    do: a decoder of a ``.vae`` file (or of the PNG it decodes to) shows the picture the
    way the camera meant it without reading EXIF. The Orientation kept in EXIF and XMP is
    reset to 1 so that no viewer turns it a second time. The caller's image is not
    changed (a frame chosen is sought back afterwards)."""
    what = Path(im.filename).name if getattr(im, "filename", None) else "the image"
    n = frame_count(im)
    if frame is None and n > 1:
        raise InputImageError(
            f"{what} has {n} frames (an animation or a multi-page file) and a .vae file "
            f"holds one image: choose one with --frame N / frame=N (0..{n - 1})")
    if frame is None or (frame == 0 and n == 1):
        try:
            im.load()
            return _upright(im)
        except (OSError, EOFError, ValueError, SyntaxError) as e:
            raise InputImageError(f"cannot read {what} ({e})") from None
    total = int(getattr(im, "n_frames", 1) or 1)
    if not 0 <= frame < total:
        raise InputImageError(f"{what} has no frame {frame}: its frames are 0..{total - 1}")
    here = im.tell()
    try:
        im.seek(frame)
        im.load()
        out = _upright(im)
        return im.copy() if out is im else out     # a copy: `im` is sought back below
    except (OSError, EOFError, ValueError, SyntaxError) as e:
        raise InputImageError(f"cannot read frame {frame} of {what} ({e})") from None
    finally:
        try:
            im.seek(here)
        except (OSError, EOFError, ValueError):
            pass


def _upright(im: Image.Image) -> Image.Image:
    """``im`` itself when it is upright, else a turned copy whose metadata says so."""
    try:
        orientation = im.getexif().get(ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, struct.error, TypeError):
        return im                                   # unreadable EXIF: nothing to apply
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    if method is None:
        return im
    out = im.transpose(method)
    out.info = dict(im.info)                        # transpose keeps no metadata
    exif = out.info.get("exif")
    if isinstance(exif, Image.Exif):
        exif = exif.tobytes()
    if isinstance(exif, bytes):
        out.info["exif"] = _exif_upright(exif)
    for key in ("xmp", _XMP_KEY):
        xmp = out.info.get(key)
        if isinstance(xmp, (bytes, str)):
            raw = xmp.encode("utf-8") if isinstance(xmp, str) else xmp
            for pattern in _XMP_ORIENTATION:
                raw = pattern.sub(rb"\g<1>1\g<2>", raw)
            out.info[key] = raw.decode("utf-8", "replace") if isinstance(xmp, str) else raw
    return out


def _exif_upright(exif: bytes) -> bytes:
    """EXIF with Orientation = 1, patched in place where it is the usual one SHORT in IFD0
    (every other byte, maker notes included, stays as it was); else re-serialised."""
    prefix = _EXIF_PREFIX if exif.startswith(_EXIF_PREFIX) else b""
    tiff = bytearray(exif[len(prefix):])
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(count):
            at = ifd + 2 + 12 * i
            tag, kind, n = struct.unpack_from(order + "HHI", tiff, at)
            if tag == ORIENTATION and kind == 3 and n == 1:
                struct.pack_into(order + "H", tiff, at + 8, 1)
                return prefix + bytes(tiff)
    except struct.error:
        pass
    parsed = Image.Exif()
    parsed.load(exif)
    parsed[ORIENTATION] = 1
    return parsed.tobytes()


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
    return Planes(rgb=_rgb_array(im), alpha=alpha, mode=mode)


#: Rows converted at a time by ``_rgb_array``.
_STRIP = 256


def _rgb_array(im: Image.Image) -> np.ndarray:
    """HxWx3 uint8, filled a strip of rows at a time: ``np.asarray(im.convert("RGB"))`` would
    hold a converted copy and Pillow's ``tobytes`` chunks and their join besides the result
    (~10 bytes a pixel over the input's 4, 1 GB at 100 MP)."""
    w, h = im.size
    out = np.empty((h, w, 3), np.uint8)
    for r0 in range(0, h, _STRIP):
        strip = im.crop((0, r0, w, min(h, r0 + _STRIP)))
        if strip.mode != "RGB":
            strip = strip.convert("L" if strip.mode in ("L", "LA") else "RGB").convert("RGB")
        out[r0:r0 + strip.height] = np.asarray(strip, dtype=np.uint8)
    return out


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
    buf = io.BytesIO()
    _save_png(im, buf)
    return buf.getvalue()


def _save_png(im: Image.Image, f: BinaryIO) -> None:
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
    im.save(f, format="PNG", **opts)


#: What ``decode`` writes, by the output file's extension. PNG is the default (and what goes
#: to stdout); every one is lossless, so the file holds exactly the decoded pixels.
OUTPUT_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".ppm": "PPM",
                  ".pnm": "PPM", ".webp": "WEBP"}
#: The extension a format gets when only the format is given (``--format``, batches).
FORMAT_SUFFIX = {"PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "PPM": ".ppm", "WEBP": ".webp"}
WEBP_MAX_SIDE = 16383           # the WebP bitstream's limit


def output_format(path: str | os.PathLike, default: str = "PNG") -> str:
    """The format to write: the one the extension names; ``default`` (PNG unless
    ``--format`` says otherwise) without one, and for '-'. An unknown extension is an error
    before anything is decoded, rather than a PNG under a name that says otherwise."""
    ext = Path(path).suffix.lower() if str(path) != "-" else ""
    if not ext:
        return default
    if ext not in OUTPUT_FORMATS:
        known = ", ".join(OUTPUT_FORMATS)
        raise VaecodecError(f"cannot write {ext} files ({Path(path).name}): the output's "
                            f"extension chooses its format, one of {known} (WebP lossless)")
    return OUTPUT_FORMATS[ext]


def check_writable(fmt: str, width: int, height: int, mode: str) -> None:
    """Refuse what the format cannot hold before the pixels are decoded, instead of dropping
    the alpha plane or failing after the work."""
    if fmt in ("BMP", "PPM") and mode in ("RGBA", "LA"):
        raise VaecodecError(f"{fmt} has no alpha channel and this image is {mode}: write "
                            f".png, .tif or .webp instead")
    if fmt == "WEBP" and max(width, height) > WEBP_MAX_SIDE:
        raise VaecodecError(f"WebP holds at most {WEBP_MAX_SIDE} pixels a side and this "
                            f"image is {width}x{height}: write .png or .tif instead")


def image_bytes(im: Image.Image, fmt: str = "PNG") -> bytes:
    """The decoded image as the bytes of a ``fmt`` file (see ``save_image``)."""
    buf = io.BytesIO()
    save_image(im, buf, fmt)
    return buf.getvalue()


def save_image(im: Image.Image, f: BinaryIO, fmt: str = "PNG") -> None:
    """The decoded image as a file of ``fmt`` (see OUTPUT_FORMATS) written to ``f``, with
    the ICC profile, EXIF and XMP where the format has a place for them: PNG, TIFF and WebP
    hold all three, BMP and PPM none. Written straight to ``f``: a big image's file never
    sits in memory besides its pixels."""
    if fmt == "PNG":
        _save_png(im, f)
        return
    check_writable(fmt, im.width, im.height, im.mode)
    icc, exif, xmp = im.info.get("icc_profile"), im.info.get("exif"), im.info.get("xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    opts: dict = {}
    if fmt == "TIFF":
        # Pillow's own TIFF writer (uncompressed, like dwebp -tiff) keeps EXIF's sub-IFDs
        # (capture settings, GPS); XMP is TIFF tag 700.
        tags = Image.Exif()
        if exif:
            tags.load(exif)
        if xmp:
            tags[700] = xmp
        opts = {"exif": tags} if len(tags) else {}
    elif fmt == "WEBP":
        # exact: keep the colour under fully transparent pixels, as the decoder gave it
        opts = {"lossless": True, "exact": True, "exif": exif or b"", "xmp": xmp or b""}
        if im.mode in ("L", "LA"):
            im = im.convert("RGBA" if im.mode == "LA" else "RGB")
    if icc and fmt in ("TIFF", "WEBP"):
        opts["icc_profile"] = icc
    try:
        im.save(f, format=fmt, **opts)
    except OSError as e:
        if getattr(e, "errno", None) is not None:   # the file's, not the format's (disk full)
            raise
        raise VaecodecError(f"cannot write the image as {fmt} ({e})") from None
    except (ValueError, TypeError, struct.error) as e:
        raise VaecodecError(f"cannot write the image as {fmt} ({e})") from None


def write_atomic(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Temp file in the same directory + rename: a failure or Ctrl-C never leaves a partial
    file, and an existing file is replaced only by a complete new one. ``data``: the bytes,
    or a function that writes them to the open file. Failing to write (a full disk, a
    directory without write permission) is one ``VaecodecError`` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise VaecodecError(f"cannot write {path}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                   dir=path.parent or ".")
    except OSError as e:
        raise VaecodecError(f"cannot write {path}: {_reason(e)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise VaecodecError(f"cannot write {path}: {_reason(e)}") from None
        raise


def _reason(e: OSError) -> str:
    """'no space left on device', 'permission denied': the OS's words, lower case."""
    words = e.strerror or str(e)
    return words[:1].lower() + words[1:]


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m

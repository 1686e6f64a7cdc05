"""The ``.vae`` container: a header, the entropy-coded strings, side data, and a CRC32.

Stdlib only: parsing a file needs no torch, and every field is checked against its limits
before anything is allocated from it, so a 20-byte file cannot ask for a 100000x100000 image.
The layout is specified byte by byte in the README ("Container format"); change both together
and bump ``VERSION`` when old files would read differently.

All integers are big-endian. Layout of versions 2 and 3 (version 1 is the same with a 2-byte
zero ``flags`` field at offset 6, which version 2 splits into ``latent codec`` and ``flags``;
version 3 differs from 2 only in the y string, which holds tiles)::

    0   4  magic            89 56 41 45  ("\\x89VAE")
    4   1  version          3 (2: one y string; 1: files of vaecodec 1.0)
    5   1  mode             0 RGB, 1 L, 2 RGBA, 3 LA
    6   1  latent codec     0 hyperprior (one pass), 1 checkerboard (anchors, then the rest),
                            2 channel groups, each a checkerboard (2 passes a group)
    7   1  flags            0 (reserved)
    8   8  model hash       first 8 bytes of SHA-256 of the weights file
    16  4  width            1 .. MAX_SIDE
    20  4  height           1 .. MAX_SIDE
    24  4  quality          float32, 0 .. 100
    28  2  z height         ceil(height / 64)
    30  2  z width          ceil(width / 64)
    32  1  model id length  n <= 64
    33  n  model id         ASCII
    .   4  y string length  then the bytes; in version 3 they are the y tiles (TILE_PX x
                            TILE_PX pixels, raster order), each: u32 length, u32 CRC32 of
                            the tile's decoded symbols (little-endian int32), the bytes
    .   4  z string length  then the bytes
    .   4  symbols CRC32    CRC32 of the decoded y symbols (little-endian int32; in
                            version 3 tile after tile)
    .   1  side chunk count k <= 16, then k times: 4-byte tag, u32 length, bytes
           (tags: ALPH, ICCP, EXIF, "XMP "; unknown tags are kept and ignored, a repeated
           tag is an error)
    .   4  CRC32            over every byte before it
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from .errors import ChecksumError, FormatError, ImageTooLargeError, UnsupportedVersionError

MAGIC = b"\x89VAE"
VERSION = 3
#: Every version this build reads. A hyperprior file is still written as version 1, so that
#: vaecodec 1.0 reads what it could always read; version 2 exists for the context models, and
#: version 3 for context-model images of more than one tile (version 2 holds one).
VERSIONS = (1, 2, 3)
#: How y is entropy-coded, which the weights' architecture must match.
LATENT_CODECS = ("hyperprior", "checkerboard", "groups")
MODES = ("RGB", "L", "RGBA", "LA")
MAX_SIDE = 65535
#: Versions 1 and 2 code y in one string, so a decoder holds the whole image's symbols at once:
#: 67 MP bounds its memory. Version 3 codes y in tiles and allows what MAX_SIDE does.
MAX_PIXELS_ONE_STRING = 1 << 26
MAX_PIXELS = MAX_SIDE * MAX_SIDE
#: Version 3's y tiles, in pixels (64 x 64 y latents, 16 x 16 z latents).
TILE_PX = 1024
MAX_MODEL_ID = 64
MAX_CHUNKS = 16
LATENT_STRIDE = 64            # z is the image downsampled by 64 (y by 16)

_FIXED = struct.Struct(">4sBBBB8sIIfHHB")
MAX_U32 = 0xFFFFFFFF

# Side chunk tags. A reader ignores tags it does not know, so new ones need no version bump.
TAG_ALPHA = b"ALPH"           # zlib-deflated alpha plane, width x height bytes
TAG_ICC = b"ICCP"             # zlib-deflated ICC colour profile (kept by default)
TAG_EXIF = b"EXIF"            # raw EXIF (TIFF) block, only with keep_metadata
TAG_XMP = b"XMP "             # zlib-deflated XMP packet (UTF-8), only with keep_metadata


@dataclass
class Header:
    """Everything the decoder needs besides the weights: plain values, no tensors."""

    width: int
    height: int
    mode: str
    quality: float
    model_id: str
    model_hash: bytes
    z_shape: tuple[int, int]
    symbols_crc: int = 0          # the decoder's check that the range coder stayed in sync
    latent_codec: str = "hyperprior"
    version: int = 0              # 0: the version ``latent_codec`` needs (set by ``pack``)

    def __post_init__(self) -> None:
        if not self.version:
            self.version = version_for(self.latent_codec, self.width, self.height)

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass
class Container:
    header: Header
    y_string: bytes
    z_string: bytes
    side: dict[bytes, bytes] = field(default_factory=dict)


def version_for(latent_codec: str, width: int = 1, height: int = 1) -> int:
    """The oldest format version that can hold a latent codec at an image size: a reader
    of that version reads the file."""
    if latent_codec == "hyperprior":
        return 1
    return 2 if tile_grid(width, height) == (1, 1) else 3


def tile_grid(width: int, height: int) -> tuple[int, int]:
    """Rows and columns of version 3's y tiles."""
    return -(-height // TILE_PX), -(-width // TILE_PX)


def join_tiles(tiles: list[tuple[int, bytes]]) -> bytes:
    """(symbols CRC32, rANS string) per tile -> version 3's y string."""
    return b"".join(struct.pack(">II", len(s), crc) + s for crc, s in tiles)


def split_tiles(y_string: bytes, width: int, height: int) -> list[tuple[int, bytes]]:
    """Version 3's y string -> (symbols CRC32, rANS string) per tile, checked: exactly one
    entry per tile and nothing after the last."""
    rows, cols = tile_grid(width, height)
    r = _Reader(y_string, len(y_string))
    tiles = []
    for _ in range(rows * cols):
        n = r.u(">I", "y tile length")
        crc = r.u(">I", "y tile CRC")
        tiles.append((crc, r.take(n, "y tile")))
    if r.pos != r.end:
        raise FormatError("corrupt .vae file: bytes after the last y tile")
    return tiles


def latent_shape(width: int, height: int) -> tuple[int, int]:
    """Shape of z for an image, after padding to a multiple of 64."""
    return (-(-height // LATENT_STRIDE), -(-width // LATENT_STRIDE))


def check_dimensions(width: int, height: int, version: int = VERSION) -> None:
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ImageTooLargeError(
            f"image size {width}x{height} is outside 1..{MAX_SIDE} pixels per side")
    limit = MAX_PIXELS if version >= 3 else min(MAX_PIXELS, MAX_PIXELS_ONE_STRING)
    if width * height > limit:
        raise ImageTooLargeError(
            f"image too large for a version {version} file: {width}x{height} = "
            f"{width * height / 1e6:.1f} MP (the limit is {limit / 1e6:.1f} MP"
            + ("; the context-model weights code it in tiles)" if version == 1 else ")"))


def pack(c: Container) -> bytes:
    h = c.header
    check_dimensions(h.width, h.height, h.version)
    mid = h.model_id.encode("ascii")
    if len(mid) > MAX_MODEL_ID or len(h.model_hash) != 8:
        raise FormatError("model id too long or model hash not 8 bytes")
    if len(c.side) > MAX_CHUNKS or any(len(t) != 4 for t in c.side):
        raise FormatError("too many side chunks or a tag that is not 4 bytes")
    too_long = [n for n, s in (("y string", c.y_string), ("z string", c.z_string),
                               *((t.decode("latin-1"), d) for t, d in c.side.items()))
                if len(s) > MAX_U32]
    if too_long:
        raise FormatError(f"cannot write a .vae file: {too_long[0]} exceeds 4 GiB")
    if h.latent_codec not in LATENT_CODECS:
        raise FormatError(f"unknown latent codec {h.latent_codec!r}")
    if h.version not in VERSIONS or (h.version == 1) != (h.latent_codec == "hyperprior"):
        raise FormatError(f"a {h.latent_codec} image cannot be a version {h.version} file")
    if h.version == 3:
        split_tiles(c.y_string, h.width, h.height)
    codec = LATENT_CODECS.index(h.latent_codec)
    parts = [
        _FIXED.pack(MAGIC, h.version, MODES.index(h.mode), codec, 0,
                    h.model_hash, h.width, h.height, h.quality, h.z_shape[0], h.z_shape[1],
                    len(mid)),
        mid,
        struct.pack(">I", len(c.y_string)), c.y_string,
        struct.pack(">I", len(c.z_string)), c.z_string,
        struct.pack(">I", h.symbols_crc),
        struct.pack(">B", len(c.side)),
    ]
    for tag, data in c.side.items():
        parts += [tag, struct.pack(">I", len(data)), data]
    body = b"".join(parts)
    return body + struct.pack(">I", zlib.crc32(body))


class _Reader:
    def __init__(self, data: bytes, end: int):
        self.data, self.pos, self.end = data, 0, end

    def take(self, n: int, what: str) -> bytes:
        if n > self.end - self.pos:
            raise FormatError(f"truncated .vae file: {what} runs past the end of the data")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u(self, fmt: str, what: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]


def unpack(data: bytes) -> Container:
    """Parse and validate; raises a ``FormatError`` subclass with a readable message."""
    data = bytes(data)
    if len(data) < 4 or data[:4] != MAGIC:
        raise FormatError("not a .vae file (wrong magic bytes)")
    if len(data) < 5:
        raise FormatError("truncated .vae file: no version byte")
    if data[4] not in VERSIONS:
        raise UnsupportedVersionError(
            f"unsupported .vae format version {data[4]} (this build reads versions "
            f"{', '.join(map(str, VERSIONS))})")
    if len(data) < _FIXED.size + 4:
        raise FormatError(f"truncated .vae file: {len(data)} bytes is shorter than a header")
    r = _Reader(data, len(data) - 4)
    (_, version, mode, codec, flags, model_hash, width, height, quality, zh, zw,
     mid_len) = _FIXED.unpack(r.take(_FIXED.size, "header"))
    model_id = r.take(mid_len, "model id")
    y_string = r.take(r.u(">I", "y string length"), "y string")
    z_string = r.take(r.u(">I", "z string length"), "z string")
    symbols_crc = r.u(">I", "symbols CRC")
    n_chunks = r.u(">B", "side chunk count")
    if n_chunks > MAX_CHUNKS:
        raise FormatError(f"corrupt .vae file: {n_chunks} side chunks (at most {MAX_CHUNKS})")
    chunks = []
    for _ in range(n_chunks):
        tag = r.take(4, "side chunk tag")
        chunks.append((tag, r.take(r.u(">I", "side chunk length"), "side chunk")))
    if r.pos != r.end:
        raise FormatError("corrupt .vae file: unexpected bytes after the last chunk")
    (crc,) = struct.unpack(">I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise ChecksumError("checksum mismatch: the .vae file is corrupt")
    # The CRC matched, so odd values below were written by a buggy or hostile encoder.
    if flags != 0 or mode >= len(MODES):
        raise FormatError(f"corrupt .vae file: unknown mode {mode} or flags {flags}")
    # version 1 had a 2-byte zero flags field where version 2 has the latent codec
    if codec >= len(LATENT_CODECS) or (version == 1) != (LATENT_CODECS[codec] == "hyperprior"):
        raise FormatError(f"corrupt .vae file: latent codec {codec} in a version {version} "
                          "file")
    check_dimensions(width, height, version)
    if version == 3:
        split_tiles(y_string, width, height)
    if (zh, zw) != latent_shape(width, height):
        raise FormatError(f"corrupt .vae file: latent shape {zh}x{zw} does not fit "
                          f"a {width}x{height} image")
    if not 0.0 <= quality <= 100.0:
        raise FormatError(f"corrupt .vae file: quality {quality} outside 0..100")
    try:
        mid = model_id.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("corrupt .vae file: model id is not ASCII") from None
    side = dict(chunks)
    if len(side) != len(chunks):
        raise FormatError("corrupt .vae file: a side chunk tag appears twice")
    header = Header(width=width, height=height, mode=MODES[mode], quality=quality,
                    model_id=mid, model_hash=model_hash, z_shape=(zh, zw),
                    symbols_crc=symbols_crc, latent_codec=LATENT_CODECS[codec],
                    version=version)
    return Container(header, y_string, z_string, side)


def as_float32(x: float) -> float:
    """The value a float takes once stored in the header: the encoder must use exactly
    this one, or the decoder would compute other gains."""
    return struct.unpack(">f", struct.pack(">f", float(x)))[0]

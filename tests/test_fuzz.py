"""Fuzzing the container parser and the full decoder with mutated real files.

Every input must end in a decoded image or one ``VaecodecError``: never another exception,
never a hang, never an allocation beyond what the declared (capped) size needs. Most mutants
are re-sealed (CRC recomputed) so that they get past the checksum to the field checks, the
metadata chunks and the range decoder, which is where a hostile file, not a damaged one, goes.

A short, derandomized run is part of the suite. The long run (random, any number of inputs)::

    VAECODEC_FUZZ_EXAMPLES=100000 python -m pytest -q tests/test_fuzz.py

runs that many parser inputs and a tenth as many full decodes. A failure prints the
smallest input Hypothesis found; save it under tests/regressions/ with a test next to the
others in this file.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

import vaecodec
from vaecodec import bitstream, weights
from vaecodec.errors import VaecodecError

from conftest import natural_image

REGRESSIONS = Path(__file__).resolve().parent / "regressions"
LONG = int(os.environ.get("VAECODEC_FUZZ_EXAMPLES", "0"))
PARSER_EXAMPLES = LONG or 3000
DECODER_EXAMPLES = max(LONG // 10, 1) if LONG else 300
PIXEL_CAP = 160 * 160          # the decoder target's MAX_PIXELS: keeps every decode fast
HANG_SECONDS = 10              # one input (two decodes of at most PIXEL_CAP) never takes longer
WATCHDOG_SECONDS = 120         # a true hang kills the run with a traceback instead of idling

FUZZ = settings(
    derandomize=not LONG,      # the suite run is reproducible; the long run explores
    database=None,             # no .hypothesis/ folder in the repository
    deadline=None,             # timing is checked below, with a margin for a busy machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- seeds: small real files from the shipped weights, made fresh (a new model, new seeds) --

def _with_metadata(im: Image.Image) -> Image.Image:
    from PIL import ImageCms

    im.info["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "fuzz camera"
    im.info["exif"] = exif.tobytes()
    im.info["xmp"] = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    return im


@lru_cache(maxsize=1)
def seeds() -> tuple[bytes, ...]:
    """Files of the default weights, and two of every other installed weights file (the
    weights of vaecodec 1.0 among them): every format version and latent codec a decoder
    can meet."""
    rgba = natural_image(40, 30, seed=2).convert("RGBA")
    rgba.putalpha(Image.fromarray((np.arange(40 * 30) % 251).astype(np.uint8).reshape(30, 40)))
    others = tuple(
        vaecodec.encode(im, q, model=path)
        for path in weights.installed() if path != weights.default_weights_path()
        for im, q in ((natural_image(64, 48, seed=5), 40), (rgba, 70)))
    return others + (
        vaecodec.encode(natural_image(64, 48), 50),
        vaecodec.encode(natural_image(130, 70, seed=1), 90),
        vaecodec.encode(rgba, 20),
        vaecodec.encode(natural_image(50, 40, seed=3).convert("L"), 75),
        vaecodec.encode(_with_metadata(natural_image(48, 32, seed=4)), 5, keep_metadata=True),
    )


@lru_cache(maxsize=1)
def hostile_chunks() -> tuple[tuple[bytes, bytes], ...]:
    """Side chunks a hostile encoder could write (valid CRC): bombs, junk, unknown tags."""
    bomb = zlib.compress(bytes(64 << 20), 9)          # 64 KB that inflates to 64 MiB
    return (
        (bitstream.TAG_ICC, bomb), (bitstream.TAG_XMP, bomb), (bitstream.TAG_ALPHA, bomb),
        (bitstream.TAG_ICC, b"not zlib"), (bitstream.TAG_ICC, zlib.compress(b"x" * 200)),
        (bitstream.TAG_ALPHA, zlib.compress(b"\x80" * 7)), (bitstream.TAG_EXIF, b"junk"),
        (bitstream.TAG_EXIF, b"MM\x00*" + bytes(8)),
        (bitstream.TAG_XMP, zlib.compress(b"\xff\xfe")),
        (b"ZZZZ", b"a chunk from a future version"), (b"\x00\x00\x00\x00", b""),
    )


# -- mutations ------------------------------------------------------------------------------

def reseal(data: bytes) -> bytes:
    """Recompute the CRC, so that the checks behind it must catch the damage."""
    return data[:-4] + struct.pack(">I", zlib.crc32(data[:-4]))


def layout(data: bytes) -> dict[str, tuple[int, str]]:
    """Offset and struct format of every field of a valid file (README, "Container format")."""
    f = {"version": (4, "B"), "mode": (5, "B"), "latent codec": (6, "B"), "flags": (7, "B"),
         "width": (16, ">I"),
         "height": (20, ">I"), "quality": (24, ">I"), "z height": (28, ">H"),
         "z width": (30, ">H"), "model id length": (32, "B")}
    pos = 33 + data[32]
    for name in ("y length", "z length"):
        f[name] = (pos, ">I")
        pos += 4 + struct.unpack_from(">I", data, pos)[0]
    f["symbols crc"] = (pos, ">I")
    pos += 4
    f["chunk count"] = (pos, "B")
    pos += 1
    for i in range(data[pos - 1]):
        f[f"chunk {i} length"] = (pos + 4, ">I")
        pos += 8 + struct.unpack_from(">I", data, pos + 4)[0]
    return f


EXTREMES = {
    "B": [0, 1, 4, 16, 17, 0x7F, 0x80, 0xFF],
    ">H": [0, 1, 2, 0x7FFF, 0x8000, 0xFFFF],
    # 2^31 and up read as negative when signed; NaN, +-inf, -0.0 and 100.00001 as float32.
    ">I": [0, 1, 64, 65535, 65536, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x7FC00000,
           0x7F800000, 0xFF800000, 0x42C80001, 0xBF800000],
}


@st.composite
def structured(draw, data: bytes) -> bytes:
    """A valid container with one meaningful change: another size (with a latent shape that
    fits, so the decoder runs on strings made for another image), mode, quality, hash,
    strings or side chunks from another file, a hostile chunk."""
    c = bitstream.unpack(data)
    h = c.header
    kind = draw(st.sampled_from(["size", "mode", "quality", "hash", "swap", "chunk", "none"]))
    if kind == "size":
        h.width = draw(st.integers(1, 300) | st.sampled_from([1, 63, 64, 65, 160]))
        h.height = draw(st.integers(1, 300) | st.sampled_from([1, 63, 64, 65, 160]))
        h.z_shape = bitstream.latent_shape(h.width, h.height)
    elif kind == "mode":
        h.mode = draw(st.sampled_from(bitstream.MODES))
    elif kind == "quality":
        h.quality = bitstream.as_float32(draw(st.floats(0, 100) | st.sampled_from([0.0, 100.0])))
    elif kind == "hash":
        h.model_hash = draw(st.binary(min_size=8, max_size=8))
    elif kind == "swap":
        other = bitstream.unpack(draw(st.sampled_from(seeds())))
        part = draw(st.sampled_from(["y", "z", "both", "side"]))
        if part in ("y", "both"):
            c.y_string = other.y_string
        if part in ("z", "both"):
            c.z_string = other.z_string
        if part == "side":
            c.side = dict(other.side)
    elif kind == "chunk":
        tag, payload = draw(st.sampled_from(hostile_chunks()))
        c.side[tag] = payload
    with pixel_cap(1 << 26):        # sizes above the decoder target's cap are wanted too
        return bitstream.pack(c)


@st.composite
def byte_level(draw, data: bytes) -> bytes:
    """Header fields set to extremes, bit flips, truncations, insertions, deletions."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["field", "field", "flip", "truncate", "insert",
                                     "delete", "overwrite"]))
        n = len(b)
        lo = min(4, n) if draw(st.integers(0, 9)) else 0   # mostly past the magic bytes
        if kind == "field":
            try:
                fields = layout(bytes(b))
            except (IndexError, struct.error):
                continue
            off, fmt = fields[draw(st.sampled_from(sorted(fields)))]
            top = 2 ** (8 * struct.calcsize(fmt)) - 1
            value = draw(st.sampled_from(EXTREMES[fmt]) | st.integers(0, top))
            if off + struct.calcsize(fmt) <= n:
                struct.pack_into(fmt, b, off, value)
        elif kind == "flip" and n > lo:
            b[draw(st.integers(lo, n - 1))] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del b[draw(st.integers(lo, n)):]
        elif kind == "insert":
            i = draw(st.integers(lo, n))
            b[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete" and n > lo:
            i = draw(st.integers(lo, n - 1))
            del b[i:i + draw(st.integers(1, 16))]
        elif kind == "overwrite" and n > lo:
            i = draw(st.integers(lo, n - 1))
            chunk = draw(st.binary(min_size=1, max_size=8))
            b[i:i + len(chunk)] = chunk
    return bytes(b)


@st.composite
def mutants(draw, byte_odds: int = 2) -> bytes:
    """A seed with a structured change (3 in 4), then byte-level damage (``byte_odds`` in 3),
    then mostly re-sealed."""
    data = draw(st.sampled_from(seeds()))
    if draw(st.integers(0, 3)):
        data = draw(structured(data))
    if draw(st.integers(1, 3)) <= byte_odds:
        data = draw(byte_level(data))
    if len(data) >= 4 and draw(st.integers(0, 4)):      # mostly re-sealed
        data = reseal(data)
    return data


# -- the targets ------------------------------------------------------------------------------

@contextlib.contextmanager
def watchdog(seconds: float = WATCHDOG_SECONDS):
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@contextlib.contextmanager
def pixel_cap(pixels: int):
    """Lower the decoder's size limit for the duration: the mutants may declare any size up to
    it, and every decode stays a few milliseconds."""
    old = bitstream.MAX_PIXELS
    bitstream.MAX_PIXELS = pixels
    try:
        yield
    finally:
        bitstream.MAX_PIXELS = old


def check_parser(data: bytes) -> None:
    try:
        c = bitstream.unpack(data)
    except VaecodecError:
        return
    # Accepted: then it is exactly what pack writes (one canonical form, nothing ignored), and
    # nothing in it is larger than the input.
    assert bitstream.pack(c) == data
    assert len(c.y_string) + len(c.z_string) + sum(map(len, c.side.values())) <= len(data)


OUTCOMES: dict[str, int] = {}


def check_decoder(data: bytes) -> None:
    t = time.monotonic()
    with watchdog():
        try:
            im = vaecodec.decode(data)
        except VaecodecError as e:
            OUTCOMES[type(e).__name__] = OUTCOMES.get(type(e).__name__, 0) + 1
            return
        again = vaecodec.decode(data)
    elapsed = time.monotonic() - t
    OUTCOMES["image"] = OUTCOMES.get("image", 0) + 1
    h = vaecodec.read_header(data)
    assert im.size == (h.width, h.height) and im.mode == h.mode
    # Reading past a string's end would make the output depend on whatever memory follows it.
    assert np.array_equal(np.asarray(im), np.asarray(again)), "decoding is not deterministic"
    assert elapsed < HANG_SECONDS, f"two decodes took {elapsed:.1f} s"


@settings(FUZZ, max_examples=PARSER_EXAMPLES)
@given(mutants())
def _fuzz_parser(data: bytes) -> None:
    check_parser(data)


@settings(FUZZ, max_examples=max(PARSER_EXAMPLES // 4, 1))
@given(st.tuples(st.sampled_from(bitstream.VERSIONS), st.binary(max_size=200))
       .map(lambda t: bitstream.MAGIC + bytes([t[0]]) + t[1]))
def _fuzz_parser_random(data: bytes) -> None:
    check_parser(data)
    check_parser(reseal(data) if len(data) >= 4 else data)


@settings(FUZZ, max_examples=DECODER_EXAMPLES)
@given(mutants(byte_odds=1))       # more of them intact enough to reach the range decoder
def _fuzz_decoder(data: bytes) -> None:
    check_decoder(data)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_parser_survives_mutated_files():
    _fuzz_parser()


def test_parser_survives_random_bytes_after_the_magic():
    _fuzz_parser_random()


def test_decoder_survives_mutated_files():
    seeds()
    weights.load()
    before = _peak_rss_mb()
    OUTCOMES.clear()
    with pixel_cap(PIXEL_CAP):
        _fuzz_decoder()
    # Not vacuous: many mutants got through every check and were decoded.
    assert OUTCOMES.get("image", 0) >= DECODER_EXAMPLES // 10, OUTCOMES
    # Nothing allocated beyond what a PIXEL_CAP image needs (a 64 MiB bomb is refused).
    assert _peak_rss_mb() - before < 1024, f"peak RSS grew by {_peak_rss_mb() - before:.0f} MB"


def test_seeds_decode():
    for data in seeds():
        im = vaecodec.decode(data)
        assert im.size == (vaecodec.read_header(data).width, vaecodec.read_header(data).height)


# -- regressions: inputs the fuzzer (or its authors) found, one test each ---------------------

def restamped(name: str) -> bytes:
    """A regression file with the current weights' hash, re-sealed: after retraining it must
    still reach the range decoder, not stop at the weights check."""
    data = bytearray((REGRESSIONS / name).read_bytes())
    loaded = weights.load()
    data[8:16] = loaded.model_hash
    # and the format version and latent codec those weights code with
    data[6] = bitstream.LATENT_CODECS.index(loaded.model.LATENT_CODEC)
    data[4] = bitstream.version_for(loaded.model.LATENT_CODEC)
    return reseal(bytes(data))


CHILD = """
import sys, vaecodec
try:
    print("image", vaecodec.decode(open(sys.argv[1], "rb").read()).size)
except vaecodec.VaecodecError as e:
    print("error", type(e).__name__)
"""


def test_regression_empty_strings_do_not_crash_the_process(tmp_path):
    """68 bytes declaring 256x256 with empty y and z strings: CompressAI's range decoder read
    far past them and the process died of SIGSEGV, every time. In a child process, so that a
    regression fails this test instead of killing the test run."""
    f = tmp_path / "x.vae"
    f.write_bytes(restamped("empty-strings-256x256.vae"))
    r = subprocess.run([sys.executable, "-c", CHILD, str(f)], capture_output=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert r.stdout.startswith((b"image (256, 256)", b"error ")), r.stdout


def test_regression_empty_strings_decode_the_same_every_time():
    """The same bug on a small image did not crash but read whatever memory followed the
    strings: another image on every run (and bytes of the process's memory in its pixels)."""
    data = restamped("empty-strings-64x48.vae")

    def outcome():
        try:
            return np.asarray(vaecodec.decode(data)).tobytes()
        except vaecodec.VaecodecError as e:   # since the symbol CRC: a clear error
            return str(e)

    first = outcome()
    for _ in range(3):
        assert outcome() == first

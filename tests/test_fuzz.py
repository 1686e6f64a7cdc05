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
import json
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
BOMB_MIB = 512                 # what the hostile metadata and alpha chunks inflate to
# Peak RSS a fresh decoder process may add over warm decodes at PIXEL_CAP: one metadata
# chunk at its inflate limit (16 MiB) and its copies, plus allocator slack (the suite's run
# adds ~45 MB). A bomb inflated without a limit adds ~1 GB (BOMB_MIB and a copy).
MEMORY_MB = 160

FUZZ = settings(
    derandomize=not LONG,      # the suite run is reproducible; the long run explores
    database=None,             # no .hypothesis/ folder in the repository
    deadline=None,             # timing is checked below, with a margin for a busy machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- seeds: small real files from the shipped weights, made fresh (a new model, new seeds) --

def _with_metadata(im: Image.Image) -> Image.Image:
    from PIL import ImageCms

    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    # LittleCMS stamps the creation time into the header (bytes 24-35): a fixed date keeps the
    # seeds, and so the derandomized draws, the same from run to run.
    icc[24:36] = struct.pack(">6H", 2020, 1, 1, 0, 0, 0)
    im.info["icc_profile"] = bytes(icc)
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
        vaecodec.encode(natural_image(1030, 20, seed=6), 60),     # 2 tiles: version 3
        vaecodec.encode(natural_image(20, 1030, seed=7).convert("RGBA"), 30),
    )


def deflate_bomb(mib: int) -> bytes:
    """A zlib stream of ``mib`` MiB of zeros, built from one flushed block repeated (a 512 MiB
    bomb in milliseconds instead of compressing 512 MiB), with the Adler-32 of the whole."""
    c = zlib.compressobj(9)
    zeros = bytes(1 << 20)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    end = c.flush()[:-4]
    adler = ((mib << 20) % 65521) << 16 | 1       # Adler-32 of n zeros: a = 1, b = n mod 65521
    return first + block * (mib - 1) + end + struct.pack(">I", adler)


@lru_cache(maxsize=1)
def hostile_chunks() -> tuple[tuple[bytes, bytes], ...]:
    """Side chunks a hostile encoder could write (valid CRC): bombs, junk, unknown tags."""
    bomb = deflate_bomb(BOMB_MIB)                     # 0.5 MB that inflates to 512 MiB
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
    """Offset and struct format of every field of a valid file, version 1 or 2 (bitstream's
    docstring and the README, "Container format"), so that mutations can aim at each one.
    Blobs (magic, hash, model id, strings, chunk tags and payloads) are ``"<n>s"``; the fields
    tile the file exactly, which ``test_layout_matches_the_parser`` checks."""
    f = {"magic": (0, "4s"), "version": (4, "B"), "mode": (5, "B"), "model hash": (8, "8s"),
         "width": (16, ">I"), "height": (20, ">I"), "quality": (24, ">I"),
         "z height": (28, ">H"), "z width": (30, ">H"), "model id length": (32, "B")}
    if data[4] == 1:                # one 2-byte zero field where version 2 has two bytes
        f["flags"] = (6, ">H")
    else:
        f["latent codec"], f["flags"] = (6, "B"), (7, "B")
    pos = 33
    f["model id"] = (pos, f"{data[32]}s")
    pos += data[32]
    for name in ("y", "z"):
        f[f"{name} length"] = (pos, ">I")
        n = struct.unpack_from(">I", data, pos)[0]
        f[f"{name} string"] = (pos + 4, f"{n}s")
        pos += 4 + n
    f["symbols crc"] = (pos, ">I")
    f["chunk count"] = (pos + 4, "B")
    pos += 5
    for i in range(data[pos - 1]):
        n = struct.unpack_from(">I", data, pos + 4)[0]
        f[f"chunk {i} tag"] = (pos, "4s")
        f[f"chunk {i} length"] = (pos + 4, ">I")
        f[f"chunk {i} data"] = (pos + 8, f"{n}s")
        pos += 8 + n
    f["crc"] = (pos, ">I")
    if pos + 4 != len(data):
        raise ValueError(f"fields end at byte {pos + 4} of a {len(data)}-byte file")
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
    # the version a new size or latent codec needs; junk y strings of version 3 files are
    # framed as tiles, so that the file parses and the decoder meets the junk
    h.version = bitstream.version_for(h.latent_codec, h.width, h.height)
    if h.version == 3:
        try:
            bitstream.split_tiles(c.y_string, h.width, h.height)
        except bitstream.FormatError:
            rows, cols = bitstream.tile_grid(h.width, h.height)
            c.y_string = bitstream.join_tiles([(0, c.y_string)] + [(0, b"")] * (rows * cols - 1))
    with pixel_cap(1 << 26):        # sizes above the decoder target's cap are wanted too
        return bitstream.pack(c)


def field_value(draw, fmt: str) -> bytes:
    """New bytes for a field: an extreme or any value for integers, same-length junk (a
    repeated pattern, so a long string costs one short draw) for blobs."""
    if fmt.endswith("s"):
        n = struct.calcsize(fmt)
        pattern = draw(st.binary(min_size=1, max_size=max(min(n, 16), 1)))
        return (pattern * (n // len(pattern) + 1))[:n]
    top = 2 ** (8 * struct.calcsize(fmt)) - 1
    return struct.pack(fmt, draw(st.sampled_from(EXTREMES[fmt]) | st.integers(0, top)))


@st.composite
def byte_level(draw, data: bytes) -> bytes:
    """Fields set to extremes, bit flips, truncations, insertions, deletions. Field changes
    come first, aimed with the layout of the intact container (same-length values keep
    every offset valid); after a truncation or an insertion there would be no layout left."""
    fields = layout(data)
    b = bytearray(data)
    kinds = draw(st.lists(st.sampled_from(["field", "field", "flip", "truncate", "insert",
                                           "delete", "overwrite"]), min_size=1, max_size=3))
    for kind in sorted(kinds, key=lambda k: k != "field"):
        n = len(b)
        lo = min(4, n) if draw(st.integers(0, 9)) else 0   # mostly past the magic bytes
        if kind == "field":
            name = draw(st.sampled_from(sorted(fields)))
            off, fmt = fields[name]
            value = field_value(draw, fmt)
            b[off:off + len(value)] = value
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


def test_parser_survives_every_field_at_every_extreme():
    """Every field of every seed (so of every format version), set to each extreme of its
    type, or to junk for blobs, sealed and not: a sweep that covers each field by
    construction, where the random draws above cover them only by luck."""
    for data in seeds():
        for name, (off, fmt) in layout(data).items():
            values = ([struct.pack(fmt, v) for v in EXTREMES[fmt]] if not fmt.endswith("s")
                      else [bytes(struct.calcsize(fmt)), b"\xff" * struct.calcsize(fmt)])
            for value in values:
                b = data[:off] + value + data[off + len(value):]
                check_parser(b)
                check_parser(reseal(b))
    assert {data[4] for data in seeds()} == set(bitstream.VERSIONS)


def test_parser_survives_random_bytes_after_the_magic():
    _fuzz_parser_random()


def test_layout_matches_the_parser():
    """The layout the field mutations aim with reads every field of a real file where the
    parser does, in both versions, and leaves no byte out."""
    versions = set()
    for data in seeds():
        f, c = layout(data), bitstream.unpack(data)
        h = c.header

        def get(name):
            off, fmt = f[name]
            return struct.unpack_from(fmt, data, off)[0]

        versions.add(h.version)
        assert (get("magic"), get("version")) == (bitstream.MAGIC, h.version)
        assert bitstream.MODES[get("mode")] == h.mode and get("flags") == 0
        if h.version == 1:
            assert "latent codec" not in f and f["flags"] == (6, ">H")
            assert h.latent_codec == "hyperprior"
        else:
            assert bitstream.LATENT_CODECS[get("latent codec")] == h.latent_codec
        assert get("model hash") == h.model_hash
        assert (get("width"), get("height")) == (h.width, h.height)
        assert struct.unpack(">f", struct.pack(">I", get("quality")))[0] == h.quality
        assert (get("z height"), get("z width")) == h.z_shape
        assert get("model id length") == len(h.model_id)
        assert get("model id") == h.model_id.encode("ascii")
        for name, string in (("y", c.y_string), ("z", c.z_string)):
            assert (get(f"{name} length"), get(f"{name} string")) == (len(string), string)
        assert get("symbols crc") == h.symbols_crc
        assert get("chunk count") == len(c.side)
        chunks = {get(f"chunk {i} tag"): (get(f"chunk {i} length"), get(f"chunk {i} data"))
                  for i in range(len(c.side))}
        assert chunks == {t: (len(d), d) for t, d in c.side.items()}
        assert get("crc") == zlib.crc32(data[:-4])
        spans = sorted((off, off + struct.calcsize(fmt)) for off, fmt in f.values())
        assert spans[0][0] == 0 and spans[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), spans
    assert versions == set(bitstream.VERSIONS)
    assert any(bitstream.unpack(d).side for d in seeds())


def bomb_files(files) -> list[bytes]:
    """Every file with each hostile chunk that inflates to BOMB_MIB (re-sealed, valid)."""
    out = []
    for data in files:
        for tag, payload in hostile_chunks()[:3]:
            c = bitstream.unpack(data)
            c.side[tag] = payload
            out.append(bitstream.pack(c))
    return out


def decoder_run(seed_dir: Path, unbounded: bool = False) -> dict:
    """The decoder fuzz run and the bombs, in a fresh process (``ru_maxrss`` is a high-water
    mark: in the test process, earlier tests' peaks would hide a bomb). The baseline is the
    peak after a decode of a PIXEL_CAP image with metadata by every installed model (the
    seeds use them all). ``unbounded`` is the
    control: metadata inflated without a limit, one bomb only."""
    global seeds
    files = tuple(p.read_bytes() for p in sorted(seed_dir.glob("*.vae")))
    seeds = lambda: files                                      # noqa: E731
    for path in weights.installed():          # the seeds' models, each loaded and used once
        vaecodec.decode(vaecodec.encode(_with_metadata(natural_image(160, 160, seed=6)), 50,
                                        model=path, keep_metadata=True), model=path)
    before = _peak_rss_mb()
    OUTCOMES.clear()
    with pixel_cap(PIXEL_CAP):
        if unbounded:
            from vaecodec import image
            image._inflate = lambda data, what, limit=0: zlib.decompress(data)
            try:
                vaecodec.decode(bomb_files(files[:1])[0])      # the ICC bomb
            except VaecodecError:
                pass
        else:
            _fuzz_decoder()
            for data in bomb_files(files):
                check_decoder(data)
    return {"outcomes": OUTCOMES, "growth_mb": _peak_rss_mb() - before}


def run_decoder_child(tmp_path: Path, *flags: str) -> dict:
    for i, data in enumerate(seeds()):
        (tmp_path / f"{i:02d}.vae").write_bytes(data)
    r = subprocess.run([sys.executable, __file__, "decoder", str(tmp_path), *flags],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return json.loads(r.stdout.splitlines()[-1])


def test_decoder_survives_mutated_files(tmp_path):
    res = run_decoder_child(tmp_path)
    # Not vacuous: many mutants got through every check and were decoded.
    assert res["outcomes"].get("image", 0) >= DECODER_EXAMPLES // 10, res
    # Nothing allocated beyond what a PIXEL_CAP image needs (a BOMB_MIB bomb is refused).
    assert res["growth_mb"] < MEMORY_MB, f"peak RSS grew by {res['growth_mb']:.0f} MB"


def test_memory_check_sees_an_unbounded_inflate(tmp_path):
    """The control: with metadata inflated without a limit, the same measurement sees the
    bombs, so the bound above is one a real bomb cannot pass."""
    res = run_decoder_child(tmp_path, "unbounded")
    assert res["growth_mb"] > MEMORY_MB, res


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


if __name__ == "__main__":
    if sys.argv[1:2] == ["decoder"]:
        print(json.dumps(decoder_run(Path(sys.argv[2]), "unbounded" in sys.argv[3:])))

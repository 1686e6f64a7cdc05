"""The container alone: no torch, every malformed input is a FormatError subclass."""

import struct
import zlib

import pytest

from vaecodec.bitstream import (MAGIC, MAX_PIXELS_ONE_STRING, TILE_PX, Container, Header,
                                join_tiles, latent_shape, pack, split_tiles, tile_grid, unpack)
from vaecodec.errors import (ChecksumError, FormatError, ImageTooLargeError,
                             UnsupportedVersionError, VaecodecError)


def make(width=100, height=70, mode="RGB", side=None) -> Container:
    h = Header(width=width, height=height, mode=mode, quality=42.5, model_id="test-model",
               model_hash=bytes(range(8)), z_shape=latent_shape(width, height))
    return Container(h, b"y" * 50, b"z" * 7, side or {})


def recrc(body: bytes) -> bytes:
    """Re-seal a hand-edited file so the field checks, not the CRC, must catch it."""
    return body[:-4] + struct.pack(">I", zlib.crc32(body[:-4]))


def test_round_trip_every_field():
    c = make(side={b"ALPH": b"\x00\x01\x02"})
    d = unpack(pack(c))
    assert d == c
    assert d.header.version == 1


def test_latent_shape_pads_to_64():
    assert latent_shape(1, 1) == (1, 1)
    assert latent_shape(64, 64) == (1, 1)
    assert latent_shape(65, 128) == (2, 2)
    assert latent_shape(768, 512) == (8, 12)


def test_wrong_magic():
    with pytest.raises(FormatError, match="not a .vae file"):
        unpack(b"\x89PNG\r\n\x1a\n" + b"\x00" * 60)
    with pytest.raises(FormatError, match="not a .vae file"):
        unpack(b"")


def test_unsupported_version():
    data = bytearray(pack(make()))
    data[4] = 9
    with pytest.raises(UnsupportedVersionError, match="version 9"):
        unpack(recrc(bytes(data)))


def test_every_truncation_is_a_clear_error():
    data = pack(make(side={b"ALPH": b"abc"}))
    for n in range(len(data)):
        with pytest.raises(FormatError):
            unpack(data[:n])


def test_every_single_bit_flip_is_caught():
    data = pack(make())
    for i in range(len(data)):
        for bit in (0, 3, 7):
            b = bytearray(data)
            b[i] ^= 1 << bit
            with pytest.raises(VaecodecError):
                unpack(bytes(b))


def test_bit_flip_in_payload_is_a_checksum_error():
    data = bytearray(pack(make()))
    data[60] ^= 0x10
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        unpack(bytes(data))


def test_trailing_garbage():
    with pytest.raises(FormatError):
        unpack(recrc(pack(make())[:-4] + b"junk" + b"\0\0\0\0"))


@pytest.mark.parametrize("w,h", [(100000, 100000), (0, 10), (10, 0), (65535, 65535)])
def test_absurd_dimensions_rejected_before_allocation(w, h):
    data = bytearray(pack(make()))
    struct.pack_into(">II", data, 16, w, h)
    with pytest.raises(ImageTooLargeError):
        unpack(recrc(bytes(data)))


def test_pack_refuses_too_large():
    with pytest.raises(ImageTooLargeError, match="too large for a version 1 file"):
        pack(make(width=16384, height=MAX_PIXELS_ONE_STRING // 16384 + 1))


def make_tiled(width, height, tiles=None, codec="groups") -> Container:
    h = Header(width=width, height=height, mode="RGB", quality=50.0, model_id="test-model",
               model_hash=bytes(range(8)), z_shape=latent_shape(width, height),
               latent_codec=codec)
    rows, cols = tile_grid(width, height)
    if tiles is None:
        tiles = [(i * 7919, bytes([i % 256]) * (i % 5)) for i in range(rows * cols)]
    y = join_tiles(tiles) if h.version == 3 else tiles[0][1]   # version 2: the one string
    return Container(h, y, b"z" * 7)


@pytest.mark.parametrize("codec", ["groups", "checkerboard"])
def test_context_models_write_version_2_for_one_tile_and_3_for_more(codec):
    assert make_tiled(TILE_PX, TILE_PX, [(1, b"ab")], codec).header.version == 2
    for w, h in ((TILE_PX + 1, 10), (10, TILE_PX + 1), (3000, 2000)):
        c = make_tiled(w, h, codec=codec)
        assert c.header.version == 3
        d = unpack(pack(c))
        assert d == c
        assert split_tiles(d.y_string, w, h) == split_tiles(c.y_string, w, h)
        assert len(split_tiles(d.y_string, w, h)) == tile_grid(w, h)[0] * tile_grid(w, h)[1]


def test_version_3_allows_what_the_side_limit_allows():
    w = h = 65535
    c = make_tiled(w, h, [(0, b"")] * (tile_grid(w, h)[0] * tile_grid(w, h)[1]))
    assert unpack(pack(c)).header.pixels == w * h > MAX_PIXELS_ONE_STRING


@pytest.mark.parametrize("damage", ["one tile short", "one tile more", "bytes after",
                                    "tile runs past"])
def test_version_3_tiles_must_fill_the_y_string_exactly(damage):
    w, h = 2100, 1500                                      # 3 x 2 tiles
    tiles = [(i, b"t%d" % i) for i in range(6)]
    y = {"one tile short": join_tiles(tiles[:5]), "one tile more": join_tiles(tiles + [(9, b"")]),
         "bytes after": join_tiles(tiles) + b"x",
         "tile runs past": join_tiles(tiles)[:-1]}[damage]
    c = make_tiled(w, h, tiles)
    with pytest.raises(FormatError, match="y tile|last y tile"):
        pack(Container(c.header, y, c.z_string))
    good = pack(c)
    ylen = struct.pack(">I", len(c.y_string))
    at = good.index(ylen + c.y_string)
    bad = good[:at] + struct.pack(">I", len(y)) + y + good[at + 4 + len(c.y_string):]
    with pytest.raises(FormatError, match="y tile|last y tile"):
        unpack(recrc(bad))


def test_a_version_2_file_of_more_than_one_tile_still_reads():
    """Written by development builds before tiles: one string for any size."""
    data = bytearray(pack(make_tiled(1000, 1000, [(0, b"one string")])))
    assert data[4] == 2
    struct.pack_into(">II", data, 16, 3000, 2000)
    struct.pack_into(">HH", data, 28, *latent_shape(3000, 2000))
    d = unpack(recrc(bytes(data)))
    assert (d.header.version, d.header.width, d.y_string) == (2, 3000, b"one string")


def test_latent_shape_must_fit_dimensions():
    data = bytearray(pack(make()))
    struct.pack_into(">HH", data, 28, 50, 50)
    with pytest.raises(FormatError, match="latent shape"):
        unpack(recrc(bytes(data)))


@pytest.mark.parametrize("q", [-1.0, 100.5, float("nan"), float("inf")])
def test_quality_out_of_range(q):
    data = bytearray(pack(make()))
    struct.pack_into(">f", data, 24, q)
    with pytest.raises(FormatError, match="quality"):
        unpack(recrc(bytes(data)))


def test_huge_declared_string_length_is_truncation():
    data = bytearray(pack(make()))
    off = 33 + len("test-model")
    struct.pack_into(">I", data, off, 0xFFFFFFFF)
    with pytest.raises(FormatError, match="truncated"):
        unpack(recrc(bytes(data)))


def test_unknown_mode():
    data = bytearray(pack(make()))
    data[5] = 200
    with pytest.raises(FormatError, match="mode"):
        unpack(recrc(bytes(data)))


def test_magic_is_documented_value():
    assert pack(make())[:4] == MAGIC == b"\x89VAE"

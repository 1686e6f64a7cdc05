"""The container alone: no torch, every malformed input is a FormatError subclass."""

import struct
import zlib

import pytest

from vaecodec.bitstream import (MAGIC, MAX_PIXELS, Container, Header, latent_shape, pack,
                                unpack)
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
    with pytest.raises(ImageTooLargeError, match="too large"):
        pack(make(width=16384, height=MAX_PIXELS // 16384 + 1))


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

"""The Python API with the shipped weights, on real images."""

import numpy as np
import pytest
from PIL import Image

import vaecodec
from vaecodec import bitstream, weights
from vaecodec.errors import ChecksumError, FormatError, VaecodecError, WeightsMismatchError

from conftest import natural_image, psnr


@pytest.mark.parametrize("size", [(1, 1), (1, 100), (100, 1), (3, 200), (63, 65), (64, 64),
                                  (129, 70), (300, 191)])
def test_any_size_round_trips_exactly_to_its_size(size):
    im = natural_image(*size)
    out = vaecodec.decode(vaecodec.encode(im, 80))
    assert out.size == size and out.mode == "RGB"
    if min(size) >= 32:
        assert psnr(im, out) > 24


def test_kodak_quality_is_monotone_in_rate_and_distortion(kodim):
    im = kodim(23)
    results = []
    for q in (0, 20, 40, 60, 80, 100):
        data = vaecodec.encode(im, q)
        results.append((8 * len(data) / (im.width * im.height), psnr(im, vaecodec.decode(data))))
    bpps, psnrs = zip(*results)
    assert list(bpps) == sorted(bpps), results
    assert list(psnrs) == sorted(psnrs), results
    assert bpps[0] < 0.25 and bpps[-1] > 5 * bpps[0], results


def test_fractional_qualities_lie_between_their_neighbours(kodim):
    im = kodim(7)
    sizes = [len(vaecodec.encode(im, q)) for q in (50, 50.5, 51)]
    assert sizes[0] <= sizes[1] <= sizes[2]


def test_decoding_is_deterministic_and_bytes_are_reproducible(kodim):
    im = kodim(4)
    a, b = vaecodec.encode(im, 33.3), vaecodec.encode(im, 33.3)
    assert a == b
    assert np.array_equal(np.asarray(vaecodec.decode(a)), np.asarray(vaecodec.decode(a)))


def test_grayscale_decodes_to_L(kodim):
    im = kodim(8).convert("L")
    out = vaecodec.decode(vaecodec.encode(im))
    assert out.mode == "L" and out.size == im.size
    assert psnr(im, out) > 25


def test_rgba_keeps_alpha_losslessly():
    im = natural_image(97, 61).convert("RGBA")
    a = np.zeros((61, 97), np.uint8)
    a[10:40, 5:90] = 255
    a[::3] = 128
    im.putalpha(Image.fromarray(a))
    out = vaecodec.decode(vaecodec.encode(im))
    assert out.mode == "RGBA" and out.size == im.size
    assert np.array_equal(np.asarray(out.getchannel("A")), a)


def test_la_keeps_alpha():
    im = natural_image(50, 40).convert("LA")
    out = vaecodec.decode(vaecodec.encode(im))
    assert out.mode == "LA"
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(im.getchannel("A")))


@pytest.mark.parametrize("mode,expected", [("P", "RGB"), ("1", "L"), ("CMYK", "RGB"),
                                           ("YCbCr", "RGB"), ("I;16", "L"), ("I", "L"),
                                           ("F", "L")])
def test_other_modes_follow_the_documented_rule(mode, expected):
    base = natural_image(40, 30)
    if mode in ("I;16", "I"):
        g = np.asarray(base.convert("L"), dtype=np.uint16) * 257
        im = Image.fromarray(g.astype(np.uint16 if mode == "I;16" else np.int32))
        assert im.mode == mode
    elif mode == "F":
        im = base.convert("L").convert("F")
    else:
        im = base.convert(mode)
    out = vaecodec.decode(vaecodec.encode(im))
    assert out.mode == expected and out.size == im.size
    if mode in ("I;16", "I", "F"):
        assert psnr(base.convert("L"), out) > 25


def test_palette_with_transparency_becomes_rgba():
    im = natural_image(40, 30).convert("P")
    im.info["transparency"] = 0
    out = vaecodec.decode(vaecodec.encode(im))
    assert out.mode == "RGBA"


def test_quality_outside_range_is_an_error():
    with pytest.raises(VaecodecError, match="quality"):
        vaecodec.encode(natural_image(8, 8), 101)


def test_bit_flipped_file_is_a_vaecodec_error(kodim):
    data = bytearray(vaecodec.encode(kodim(1).crop((0, 0, 128, 96)), 50))
    data[len(data) // 2] ^= 0x04
    with pytest.raises(ChecksumError):
        vaecodec.decode(bytes(data))


def test_wrong_weights_are_refused(tmp_path, kodim):
    from safetensors.torch import load_file, save_file

    src = weights.default_weights_path()
    meta = weights.read_metadata(src)
    other = tmp_path / "other.safetensors"
    save_file(load_file(str(src)), str(other), metadata={**meta, "model_id": "someone-else"})
    data = vaecodec.encode(kodim(3).crop((0, 0, 64, 64)), 50, model=other)
    assert vaecodec.read_header(data).model_id == "someone-else"
    with pytest.raises(WeightsMismatchError, match="encoded with other weights"):
        vaecodec.decode(data)
    assert vaecodec.decode(data, model=other).size == (64, 64)


def test_rgba_file_without_alpha_chunk_is_corrupt():
    c = bitstream.unpack(vaecodec.encode(natural_image(20, 20).convert("RGBA")))
    c.side.clear()
    with pytest.raises(FormatError, match="alpha"):
        vaecodec.decode(bitstream.pack(c))


def test_header_reports_what_was_encoded():
    data = vaecodec.encode(natural_image(70, 50), 12.5)
    h = vaecodec.read_header(data)
    assert (h.width, h.height, h.mode, h.quality) == (70, 50, "RGB", 12.5)
    assert h.model_hash == weights.load().model_hash

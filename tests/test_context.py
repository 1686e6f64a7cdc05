"""The checkerboard latent codec (format version 2) and the files vaecodec 1.0 wrote.

The context is exercised with weights whose context is not zero (a zero context codes
exactly like the hyperprior, which would hide a wrong pass order), and the zero context is
checked to give the hyperprior's very symbols."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import psnr
from PIL import Image

import vaecodec
from vaecodec import bitstream, weights
from vaecodec.context import anchor_mask
from vaecodec.errors import FormatError
from vaecodec.train_context import assemble

ROOT = Path(__file__).resolve().parent.parent
REGRESSIONS = Path(__file__).with_name("regressions")
PARROTS = ROOT / "examples" / "parrots.png"
V1_HASH = "47ee00b1d1cbe06d"


def v1_weights() -> Path:
    path = weights.find_by_hash(bytes.fromhex(V1_HASH))
    assert path is not None, "the 1.0 weights must stay installed"
    return path


@pytest.fixture(scope="module")
def v2_files(tmp_path_factory):
    """(zero-context file, trained-looking file): the 1.0 weights with a zero context, and
    with a context whose last layer is small random numbers (so it changes the params)."""
    d = tmp_path_factory.mktemp("w")
    zero = assemble(str(v1_weights()))
    weights.export(zero, d / "zero.safetensors", "test-checkerboard")
    busy = assemble(str(v1_weights()))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        last = busy.context.ep[-1]
        last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 1e-3)
        last.bias.copy_(torch.randn(last.bias.shape, generator=g) * 1e-2)
    weights.export(busy, d / "busy.safetensors", "test-checkerboard")
    return d / "zero.safetensors", d / "busy.safetensors"


@pytest.mark.parametrize("name, size, mode, want_psnr", [
    ("v1.0-parrots-q50.vae", (320, 256), "RGB", 33.678),
    ("v1.0-parrots-crop-rgba-q80.vae", (160, 128), "RGBA", 37.181),
])
def test_files_of_vaecodec_1_0_still_decode(name, size, mode, want_psnr):
    """Files written by vaecodec 1.0 itself (format version 1, weights 47ee00b1): the decoder
    finds the 1.0 weights by the recorded hash and gives the same image as 1.0 did."""
    data = (REGRESSIONS / name).read_bytes()
    h = vaecodec.read_header(data)
    assert (h.version, h.latent_codec, h.model_hash.hex()) == (1, "hyperprior", V1_HASH)
    out = vaecodec.decode(data)
    assert out.size == size and out.mode == mode
    ref = Image.open(PARROTS).convert("RGB").crop((0, 0) + size)
    assert psnr(ref, out) == pytest.approx(want_psnr, abs=0.01)
    if mode == "RGBA":
        want_alpha = np.tile(np.linspace(0, 255, size[0]).astype(np.uint8), (size[1], 1))
        assert np.array_equal(np.asarray(out)[..., 3], want_alpha)


def test_zero_context_gives_the_hyperpriors_symbols(v2_files):
    """The two-pass coder with a zero context must be the one-pass coder reordered: the same
    symbols (CRC over the whole grid), the same pixels, a string of about the same size."""
    im = Image.open(PARROTS).convert("RGB")
    a = vaecodec.encode(im, 40, model=v1_weights())
    b = vaecodec.encode(im, 40, model=v2_files[0])
    ha, hb = vaecodec.read_header(a), vaecodec.read_header(b)
    assert (ha.version, hb.version, hb.latent_codec) == (1, 2, "checkerboard")
    assert ha.symbols_crc == hb.symbols_crc
    assert abs(len(a) - len(b)) <= 8
    assert np.array_equal(np.asarray(vaecodec.decode(a)),
                          np.asarray(vaecodec.decode(b, model=v2_files[0])))


@pytest.mark.parametrize("q", [0, 50, 100])
def test_checkerboard_round_trip(v2_files, q):
    im = Image.open(PARROTS).convert("RGB")
    data = vaecodec.encode(im, q, model=v2_files[1])
    assert vaecodec.read_header(data).version == 2
    out = vaecodec.decode(data, model=v2_files[1])
    enc = vaecodec.encode(im, q, model=v2_files[0])
    assert data != enc  # the context changed the params, hence the string
    assert abs(psnr(im, out) - psnr(im, vaecodec.decode(enc, model=v2_files[0]))) < 0.3


def test_context_changes_only_the_non_anchors(v2_files):
    """The anchors are coded with the hyperprior's params; the context refines the rest."""
    loaded = weights.load(v2_files[1])
    m = loaded.model
    z = torch.round(torch.randn(1, m.N, 3, 4, generator=torch.Generator().manual_seed(1)))
    scales, means = m._hyper(z, 4.5, integer=True)
    y = torch.randn(1, m.M, 12, 16, generator=torch.Generator().manual_seed(2)).double()
    sc, mc = m._context(y, scales, means, 4.5, integer=True)
    assert not torch.equal(sc, scales) and not torch.equal(mc, means)
    # the network sees only the anchors: changing a non-anchor's value changes nothing
    mask = anchor_mask(12, 16).bool().expand_as(y)
    y2 = torch.where(mask, y, y + 5)
    assert torch.equal(m._context(y * mask, scales, means, 4.5, True)[0],
                       m._context(y2 * mask, scales, means, 4.5, True)[0])


def test_integer_context_is_exact_and_tiles_bit_for_bit(v2_files, monkeypatch):
    """Integers make the result independent of threads and of tiling."""
    from vaecodec import model as model_mod

    m = weights.load(v2_files[1]).model
    g = torch.Generator().manual_seed(3)
    s = torch.round(torch.rand(1, m.M, 40, 36, generator=g, dtype=torch.float64) * 40000)
    mu = torch.round(torch.randn(1, m.M, 40, 36, generator=g, dtype=torch.float64) * 4000)
    y = torch.randn(1, m.M, 40, 36, generator=g, dtype=torch.float64) * 3
    y = y * anchor_mask(40, 36)
    whole = m._context(y, s, mu, 2.0, True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = m._context(y, s, mu, 2.0, True)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(model_mod, "TILE", 16)
    tiles = m._context(y, s, mu, 2.0, True)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(whole, one, tiles))
    assert all(torch.equal(t, torch.round(t)) for t in whole)


def test_gathered_context_equals_the_convolution(v2_files):
    """The fast form (matrix products over the non-anchors' anchor taps) gives the plain
    float64 convolutions' integers, for odd sizes and values up to the clamp limit."""
    from vaecodec.intnet import ACT_LIMIT

    f = weights.load(v2_files[1]).model._cache()["int_context"]
    g = torch.Generator().manual_seed(4)
    for (h, w), scale in (((7, 5), 3e4), ((12, 16), 1e6), ((4, 4), 1e9)):
        def r(*shape):
            t = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
            return torch.round(t).clamp(-ACT_LIMIT, ACT_LIMIT)
        args = (r(1, 192, h, w) * anchor_mask(h, w), r(1, 192, h, w).abs(), r(1, 192, h, w),
                r(1, 192, 1, 1).abs())
        assert all(torch.equal(a, b) for a, b in zip(f(*args), f.reference(*args)))


def test_latent_codec_must_match_the_weights(v2_files):
    """A CRC-valid file claiming the hyperprior for checkerboard weights is refused."""
    im = Image.open(PARROTS).convert("RGB").crop((0, 0, 64, 64))
    c = bitstream.unpack(vaecodec.encode(im, 50, model=v2_files[1]))
    c.header.latent_codec, c.header.version = "hyperprior", 1
    forged = bitstream.pack(c)
    with pytest.raises(FormatError, match="latent codec"):
        vaecodec.decode(forged, model=v2_files[1])


def test_version_and_latent_codec_must_agree():
    data = bytearray((REGRESSIONS / "v1.0-parrots-q50.vae").read_bytes())
    data[6] = 1   # the checkerboard in a version-1 file
    import struct
    import zlib
    data[-4:] = struct.pack(">I", zlib.crc32(bytes(data[:-4])))
    with pytest.raises(FormatError, match="latent codec 1 in a version 1"):
        bitstream.unpack(bytes(data))

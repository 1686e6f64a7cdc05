"""The channel-group checkerboard latent codec (format version 2, latent codec 2).

As for the single checkerboard, the coder is exercised with contexts whose last layers are
not zero (a zero context codes like the hyperprior and would hide a wrong pass order), and
the zero context must give the hyperprior's very symbols."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import psnr
from PIL import Image

import vaecodec
from vaecodec import bitstream, weights
from vaecodec.context import ELIC_GROUPS, anchor_mask
from vaecodec.errors import WeightsError
from vaecodec.train import model_like
from vaecodec.train_context import (ContextTrainConfig, assemble, context_sizes, evaluate,
                                    grouped_bits, prior)

ROOT = Path(__file__).resolve().parent.parent
PARROTS = ROOT / "examples" / "parrots.png"
V1_HASH = "47ee00b1d1cbe06d"
SIZES = {"groups": ELIC_GROUPS, "chan": 16, "spat": 16, "hidden": 32, "kernel": 5}


def v1_weights() -> Path:
    path = weights.find_by_hash(bytes.fromhex(V1_HASH))
    assert path is not None, "the 1.0 weights must stay installed"
    return path


def busy_context(model, seed: int = 0) -> None:
    """Small random last layers: every pass's params move off the hyperprior's."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for seq in list(model.context.ep_a)[1:] + list(model.context.ep_n):
            seq[-1].weight.copy_(torch.randn(seq[-1].weight.shape, generator=g) * 1e-3)
            seq[-1].bias.copy_(torch.randn(seq[-1].bias.shape, generator=g) * 1e-2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    weights.export(assemble(str(v1_weights()), None, SIZES), d / "zero.safetensors", "test-g")
    busy = assemble(str(v1_weights()), None, SIZES)
    busy_context(busy)
    weights.export(busy, d / "busy.safetensors", "test-g")
    return d / "zero.safetensors", d / "busy.safetensors"


def test_weights_record_the_groups(files):
    m = weights.load(files[1], fast=False).model
    assert type(m).__name__ == "GroupedCheckerboardHyperprior"
    assert m.context.groups == ELIC_GROUPS and m.LATENT_CODEC == "groups"
    meta = weights.read_metadata(files[1])
    assert json.loads(meta["groups"]) == list(ELIC_GROUPS)
    # a checkpoint's state rebuilds the same architecture (joint training, export)
    again = model_like(None, m.state_dict())
    assert again.context.groups == ELIC_GROUPS
    state = {k: v for k, v in m.state_dict().items()
             if k.rsplit(".", 1)[-1] not in weights._CDF_BUFFERS}
    missing, unexpected = again.load_state_dict(state, strict=False)
    assert not unexpected and all(k.rsplit(".", 1)[-1] in weights._CDF_BUFFERS for k in missing)


def test_groups_that_do_not_add_up_are_refused(files, tmp_path):
    from safetensors.torch import load_file, save_file

    meta = weights.read_metadata(files[1])
    meta["groups"] = json.dumps([16, 16, 32, 64, 63])
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(files[1])), str(bad), metadata=meta)
    with pytest.raises(WeightsError, match="out of range"):
        weights.load(bad)


def test_zero_context_gives_the_hyperpriors_symbols(files):
    im = Image.open(PARROTS).convert("RGB")
    a = vaecodec.encode(im, 40, model=v1_weights())
    b = vaecodec.encode(im, 40, model=files[0])
    hb = vaecodec.read_header(b)
    assert (hb.version, hb.latent_codec) == (2, "groups")
    assert vaecodec.read_header(a).symbols_crc == hb.symbols_crc
    # the same symbols in another order: rANS costs the same up to its flush bytes
    ya, yb = (bitstream.unpack(d).y_string for d in (a, b))
    assert abs(len(ya) - len(yb)) <= 8
    assert np.array_equal(np.asarray(vaecodec.decode(a)),
                          np.asarray(vaecodec.decode(b, model=files[0])))


@pytest.mark.parametrize("q", [0, 50, 100])
def test_grouped_round_trip(files, q):
    im = Image.open(PARROTS).convert("RGB")
    data = vaecodec.encode(im, q, model=files[1])
    out = vaecodec.decode(data, model=files[1])   # the CRC of the symbols is checked inside
    enc = vaecodec.encode(im, q, model=files[0])
    assert data != enc
    assert abs(psnr(im, out) - psnr(im, vaecodec.decode(enc, model=files[0]))) < 0.3


def test_float_control_codes_too(files):
    """The float path (the control of the cross-numerics tests) is a working coder as well."""
    m = weights.load(files[1]).model
    x = torch.from_numpy(np.asarray(Image.open(PARROTS).convert("RGB"))[:128, :192].copy())
    x = x.permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        r = m.compress(x, 4.0, integer=False)
        _, crc = m.decompress(r["strings"], r["shape"], 4.0, integer=False)
    assert crc == r["symbols_crc"]


def _grid(g, *shape, scale=3e4):
    from vaecodec.intnet import ACT_LIMIT

    t = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
    return torch.round(t).clamp(-ACT_LIMIT, ACT_LIMIT)


def test_integer_passes_equal_the_convolutions(files):
    """Every pass's gathered matrix products give the whole-grid float64 convolutions'
    integers, for odd sizes and values up to the clamp limit."""
    f = weights.load(files[1]).model._cache()["int_context"]
    g = torch.Generator().manual_seed(4)
    starts = [sum(ELIC_GROUPS[:k]) for k in range(len(ELIC_GROUPS))]
    for (h, w), scale in (((7, 5), 3e4), ((12, 16), 1e6), ((4, 4), 1e9)):
        for k, n in enumerate(ELIC_GROUPS):
            dec = _grid(g, 1, starts[k], h, w, scale=scale) if k else None
            anchors = _grid(g, 1, n, h, w, scale=scale) * anchor_mask(h, w)
            args = (_grid(g, 1, n, h, w, scale=scale).abs(), _grid(g, 1, n, h, w, scale=scale),
                    _grid(g, 1, n, 1, 1, scale=scale).abs())
            for first in (True, False):
                a = None if first else anchors
                got, want = f(k, first, dec, a, *args), f.reference(k, first, dec, a, *args)
                assert all(torch.equal(u, v) for u, v in zip(got, want)), (k, first, h, w)


def test_group_params_tile_and_thread_bit_for_bit(files, monkeypatch):
    from vaecodec import model as model_mod

    m = weights.load(files[1]).model
    g = torch.Generator().manual_seed(3)
    k, c = 3, slice(64, 128)
    sh, mh = _grid(g, 1, 64, 40, 36).abs(), _grid(g, 1, 64, 40, 36, scale=4000)
    dec = torch.randn(1, 64, 40, 36, generator=g) * 3
    anchors = torch.randn(1, 64, 40, 36, generator=g) * 3 * anchor_mask(40, 36)

    def run():
        return [m._group_params(k, first, dec, anchors, sh, mh, 2.0, True, c)
                for first in (True, False)]

    whole = run()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(model_mod, "TILE", 16)
    tiles = run()
    for a, b, t in zip(whole, one, tiles):
        assert all(torch.equal(u, v) and torch.equal(u, w) for u, v, w in zip(a, b, t))
    assert not torch.equal(whole[1][0], sh)  # the context did something


def test_fitting_lowers_the_held_out_bits():
    """A few steps of the cached-latent fit on real latents: the bits it reports are the
    real rounded bits, and training on the same latents lowers them (the zero start
    reports the hyperprior's bits)."""
    m = weights.load(v1_weights(), fast=False).model
    im = Image.open(PARROTS).convert("RGB")
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = m.analyze(x)[0][0]
    cfg = ContextTrainConfig(data="", weights="", out="", groups=ELIC_GROUPS, chan=16, spat=16,
                             hidden=32)
    from vaecodec.context import GroupedCheckerboardContext

    torch.manual_seed(0)
    ctx = GroupedCheckerboardContext(m.M, **context_sizes(cfg))
    # the same bits up to float32 summation order (which differs by CPU kind)
    assert all(abs(v) < 1e-6 for v in evaluate(m, ctx, [y], (50.0,)).values())
    opt = torch.optim.Adam(ctx.parameters(), lr=1e-3)
    level = torch.full((1,), 4.5)
    for _ in range(30):
        with torch.no_grad():
            p = prior(m, y[None], level)
        loss = grouped_bits(ctx, p, noise=True).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert evaluate(m, ctx, [y], (50.0,))[50.0] < -0.005

"""Rate-distortion optimised rounding: only ever one step toward the mean, cheaper files on
real photos, ordinary files, and an exact opt-out."""

import numpy as np
import pytest
import torch
from compressai.entropy_models import GaussianConditional

import vaecodec
from vaecodec import bitstream, codec, rdoq, weights
from conftest import psnr, rd_cost, run_cli

GC = GaussianConditional(None)


def test_only_steps_toward_the_mean_and_only_from_past_a_half():
    torch.manual_seed(0)
    r = torch.randn(20000) * 3
    sigma = torch.rand(20000) * 4 + 0.11
    nearest = torch.round(r)
    s = rdoq.rd_round(r, sigma, 1e-4, GC).float()  # small lambda: bits are dear, many moves
    moved = s != nearest
    assert moved.any()
    # a move is exactly one step, toward zero (the mean), from a value rounded away from it
    assert torch.equal((s - nearest)[moved].abs(), torch.ones(int(moved.sum())))
    assert (s[moved].abs() < nearest[moved].abs()).all()
    assert (nearest[moved].abs() > r[moved].abs()).all()
    # and each moved element's error is still at most one step
    assert ((s - r).abs() <= 1).all()


def test_the_exchange_rate_decides():
    torch.manual_seed(1)
    r, sigma = torch.randn(20000) * 3, torch.rand(20000) * 4 + 0.11
    moved = [rdoq.rd_round(r, sigma, lam, GC) != torch.round(r) for lam in (5e-4, 1e-2, 1e6)]
    assert moved[0].sum() > moved[1].sum() > moved[2].sum()  # dearer distortion, fewer moves
    # at a huge price only steps that add almost no error (from ~a half away) are taken
    assert ((torch.round(r) - r)[moved[2]].abs() > 0.49).all()
    assert rdoq.threshold(5e-4) == pytest.approx(20)


def _kodak_crop(kodim, n: int):
    return kodim(n).crop((0, 0, 384, 256))


@pytest.mark.parametrize("quality", [0, 15, 40])
def test_lowers_the_real_cost_of_photos(kodim, quality):
    """The objective the threshold was fitted for (on training photos, not Kodak), measured
    on complete files decoded by the ordinary decoder."""
    total = {True: 0.0, False: 0.0}
    for n in (3, 14, 19):
        im = _kodak_crop(kodim, n)
        for on in total:
            total[on] += rd_cost(im, vaecodec.encode(im, quality, rdoq=on))
    assert total[True] < 0.995 * total[False]


def test_files_are_ordinary_and_decode_to_what_the_encoder_measured(kodim):
    im = _kodak_crop(kodim, 21)
    data, plain = vaecodec.encode(im, 20), vaecodec.encode(im, 20, rdoq=False)
    assert len(data) < len(plain)
    h, hp = vaecodec.read_header(data), vaecodec.read_header(plain)
    assert (h.quality, h.z_shape, h.model_hash) == (hp.quality, hp.z_shape, hp.model_hash)
    loaded = weights.load()
    a = codec.analyze_pixels(np.asarray(im), loaded)
    coded, y_hat = codec.code_at(a, 20, loaded)
    assert coded.y_string == bitstream.unpack(data).y_string
    assert np.array_equal(np.asarray(vaecodec.decode(data)), codec.reconstruct(a, y_hat, loaded))
    assert psnr(im, vaecodec.decode(data)) > psnr(im, vaecodec.decode(plain)) - 0.6


def test_opt_out_rounds_to_nearest(kodim):
    """--no-rdoq codes exactly round(y - mu), the symbols CompressAI would code."""
    im = _kodak_crop(kodim, 5)
    loaded = weights.load()
    a = codec.analyze_pixels(np.asarray(im), loaded)
    level = codec.quality_to_level(25, loaded.model.levels)
    m = loaded.model
    with torch.inference_mode():
        _, indexes, means_g = m.code_z(a.z, level)
        from vaecodec.intnet import gains_fixed
        gy = torch.tensor(gains_fixed(m.y_log_gain, level)[0]).view(1, -1, 1, 1)
        nearest = torch.round(a.y * gy - means_g)
        y_hat = m.compress_latent(a.y, a.z, level, rdoq=False)["y_hat"]
        gi = torch.tensor(gains_fixed(m.y_log_gain_inv, level)[0]).view(1, -1, 1, 1)
        # the anchors (every latent of the hyperprior; with channel groups, the first
        # group's) use the hyperprior's means exactly; the rest their context's, which are
        # still rounded to nearest (checked within half a step below)
        from vaecodec.context import anchor_mask
        anchors = anchor_mask(*a.y.shape[-2:]).bool().expand_as(y_hat).clone()
        if m.LATENT_CODEC == "hyperprior":
            anchors = torch.ones_like(anchors)
        elif m.LATENT_CODEC == "groups":
            anchors[:, m.context.groups[0]:] = False
        want = (nearest + means_g) * gi
        assert torch.equal(y_hat[anchors], want[anchors])
        assert float((a.y * gy - y_hat / gi).abs().max()) <= 0.5 + 1e-3


def test_cli_no_rdoq(tmp_path, kodim):
    src = tmp_path / "a.png"
    _kodak_crop(kodim, 7).save(src)
    for flag, name in (("--rdoq", "a.vae"), ("--no-rdoq", "b.vae")):
        r = run_cli("encode", src, "-q", "10", "-o", tmp_path / name, flag, "--quiet")
        assert r.returncode == 0, r.stderr
    a, b = (tmp_path / "a.vae").read_bytes(), (tmp_path / "b.vae").read_bytes()
    assert len(a) < len(b)
    assert a == vaecodec.encode(_kodak_crop(kodim, 7), 10)

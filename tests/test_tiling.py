"""Tiled transforms: bounded memory for big images, and no seams (the same numbers as whole)."""

import numpy as np
import pytest
import torch

import vaecodec
from vaecodec import model as model_mod, weights
from vaecodec.metrics import psnr
from vaecodec.model import HALO_ANALYSIS, HALO_SYNTHESIS, Y_STRIDE, tiled


@pytest.fixture(scope="module")
def net():
    return weights.load(None).model


def _x(im):
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 255


def test_tiled_analysis_equals_whole(net, kodim):
    x = _x(kodim(1))
    with torch.inference_mode():
        whole = net.g_a(x)
        parts = tiled(net.g_a, x, 7, HALO_ANALYSIS, down=Y_STRIDE, up=1)
        short = tiled(net.g_a, x, 7, HALO_ANALYSIS - 1, down=Y_STRIDE, up=1)
    assert parts.shape == whole.shape
    assert (parts - whole).abs().max() < 1e-4
    # the halo is needed: one latent less of context changes the latents at tile edges
    assert (short - whole).abs().max() > 1e-2


def test_tiled_synthesis_equals_whole(net, kodim):
    with torch.inference_mode():
        y = torch.round(net.g_a(_x(kodim(2))))
        whole = net.g_s(y)
        parts = tiled(net.g_s, y, 5, HALO_SYNTHESIS, down=1, up=Y_STRIDE)
    assert (parts - whole).abs().max() < 1e-4


@pytest.mark.parametrize("n", [1, 13])
def test_tiled_coding_psnr_matches_whole(kodim, monkeypatch, n):
    """End to end with 8x8-latent tiles (128 px) against the whole-image path: the same file
    format, PSNR within 0.05 dB, and each decodes under the other setting."""
    im = kodim(n)
    whole = vaecodec.encode(im, 50)
    monkeypatch.setattr(model_mod, "TILE", 8)
    parts = vaecodec.encode(im, 50)
    out_tiled = vaecodec.decode(parts)
    monkeypatch.setattr(model_mod, "TILE", 64)
    out_whole = vaecodec.decode(whole)
    assert abs(psnr(im, out_tiled) - psnr(im, out_whole)) <= 0.05
    assert abs(len(parts) - len(whole)) <= 0.001 * len(whole)
    assert vaecodec.decode(parts).size == im.size


def test_tiled_integer_hyper_synthesis_is_bit_exact(net):
    from vaecodec.intnet import IntegerHyperSynthesis
    from vaecodec.model import HALO_HYPER

    f = net._cache()["int_h_s"]
    torch.manual_seed(0)
    x = IntegerHyperSynthesis.to_grid(torch.round(torch.randn(1, net.N, 13, 18) * 3))
    assert torch.equal(tiled(f, x, 5, HALO_HYPER, down=1, up=4), f(x))


def test_small_hyper_tiles_give_the_same_file(kodim, monkeypatch):
    """Integer tiles are exact, so the whole .vae file is byte-identical."""
    im = kodim(19)
    whole = vaecodec.encode(im, 40)
    pixels = np.asarray(vaecodec.decode(whole))
    monkeypatch.setattr(model_mod, "Z_TILE", 3)
    assert vaecodec.encode(im, 40) == whole
    assert np.array_equal(np.asarray(vaecodec.decode(whole)), pixels)

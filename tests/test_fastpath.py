"""The inference rewrites compute the same functions as the trained layers."""

import copy

import numpy as np
import pytest
import torch

from vaecodec import fastpath, weights


@pytest.fixture(scope="module")
def pair():
    return weights.load(None, fast=False).model, weights.load(None).model


def test_fast_transforms_match_the_trained_ones(pair, kodim):
    slow, fast = pair
    x = torch.from_numpy(np.asarray(kodim(4)).copy()).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        y0, y1 = slow.g_a(x), fast.g_a(x.contiguous(memory_format=torch.channels_last))
        assert (y0 - y1).abs().max() < 1e-3 * y0.abs().max()
        q = torch.round(y0)
        x0, x1 = slow.g_s(q), fast.g_s(q.contiguous(memory_format=torch.channels_last))
        assert (x0 - x1).abs().max() < 1e-4


def test_gdn_bands_equal_one_pass(pair):
    _, fast = pair
    gdn = fast.g_a[1]
    assert isinstance(gdn, fastpath.FoldedGDN)
    x = torch.rand(1, gdn.bias.numel(), 100, 90).contiguous(memory_format=torch.channels_last)
    banded = copy.deepcopy(gdn)
    banded.BAND_BYTES = 4096  # a few rows per band, with a ragged last band
    with torch.inference_mode():
        assert torch.equal(banded(x), gdn._band(x, torch.empty_like(x)))


@pytest.mark.parametrize("cin,cout", [(8, 3), (16, 5)])
def test_subpixel_deconv_is_the_transposed_convolution(cin, cout):
    torch.manual_seed(0)
    dc = torch.nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)
    x = torch.randn(2, cin, 7, 11)
    with torch.no_grad():
        assert torch.allclose(fastpath.SubpixelDeconv(dc)(x), dc(x), atol=1e-5)


def test_subpixel_refuses_other_shapes():
    with pytest.raises(ValueError):
        fastpath.SubpixelDeconv(torch.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1))

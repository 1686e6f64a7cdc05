"""The hyper-synthesis in integer arithmetic, so the entropy coder's inputs are the same bits
on every machine (Ballé, Johnston, Minnen, "Integer networks for data compression", ICLR 2019).

Why: the decoder recomputes the Gaussian scales from z; if its float arithmetic differs by one
ulp from the encoder's (other CPU, thread count, oneDNN kernels, GPU), a scale can land in the
neighbouring CDF table, the range decoder desynchronises and the image is garbage.

How: every weight becomes an integer (per output channel, times a power of two chosen so
|w| < 2^12), every activation an integer on a fixed 2^-12 grid clamped to |a| <= 2^24, biases
integers on the accumulator's grid, rescaling by a power of two with round-half-up, and
LeakyReLU's slope is the dyadic 41/4096. The convolutions run in float64 on integer-valued
tensors: every product and partial sum is an integer below 2^53 (2^12 * 2^24 * 4800 terms
< 2^49), so float64 represents them exactly and the result does not depend on summation order,
blocking, BLAS or thread count. Everything is derived by exact operations (frexp, multiplication
by powers of two, rounding) from the stored float weights, so nothing extra is stored.

The last step, scale -> CDF index, is an int64 comparison with integer thresholds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FRAC_BITS = 12                  # activations are integers on a 2^-12 grid
WEIGHT_BITS = 12                # |w_int| < 2^12
ACT_LIMIT = float(2 ** 24)      # |activation| <= 2^24 (i.e. 4096.0 real)
LEAK = 41 / 4096                # LeakyReLU slope 0.01, as an exact dyadic number
GAIN_BITS = 16                  # gains on a 2^-16 grid for the index comparison


class _IntLayer:
    def __init__(self, layer: nn.Module, act: bool):
        w = layer.weight.detach().double().cpu()
        self.transposed = isinstance(layer, nn.ConvTranspose2d)
        out_dim = 1 if self.transposed else 0
        absmax = w.abs().amax(dim=[d for d in range(4) if d != out_dim]).clamp_min(1e-30)
        _, exp = torch.frexp(absmax)                     # absmax = m * 2^exp, m in [0.5, 1)
        fw = (WEIGHT_BITS - exp).double()                # |w * 2^fw| < 2^12
        shape = [1, -1, 1, 1] if self.transposed else [-1, 1, 1, 1]
        self.w = torch.round(w * torch.exp2(fw).view(shape))
        self.b = torch.round(layer.bias.detach().double().cpu() * torch.exp2(fw + FRAC_BITS))
        self.down = torch.exp2(-fw).view(1, -1, 1, 1)   # back to the 2^-12 grid
        self.stride, self.padding = layer.stride, layer.padding
        self.output_padding = getattr(layer, "output_padding", 0)
        self.act = act

    def __call__(self, x: Tensor) -> Tensor:
        if self.transposed:
            acc = F.conv_transpose2d(x, self.w, self.b, self.stride, self.padding,
                                     self.output_padding)
        else:
            acc = F.conv2d(x, self.w, self.b, self.stride, self.padding)
        x = torch.floor(acc * self.down + 0.5)
        if self.act:
            x = torch.where(x < 0, torch.floor(x * LEAK), x)
        return x.clamp_(-ACT_LIMIT, ACT_LIMIT)


class IntegerHyperSynthesis:
    """h_s (conv/deconv layers with LeakyReLU between) evaluated exactly in integers."""

    def __init__(self, h_s: nn.Sequential):
        convs = [m for m in h_s if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        self.layers = [_IntLayer(c, act=i < len(convs) - 1) for i, c in enumerate(convs)]

    @staticmethod
    def to_grid(x: Tensor) -> Tensor:
        """Float input (the dequantized hyper-latent) -> integers on the 2^-12 grid."""
        return torch.round(x.double().cpu() * 2.0 ** FRAC_BITS).clamp_(-ACT_LIMIT, ACT_LIMIT)

    def __call__(self, x_int: Tensor) -> Tensor:
        with torch.inference_mode():
            for layer in self.layers:
                x_int = layer(x_int)
        return x_int


def gains_fixed(log_gains: Tensor, level: float) -> tuple[list[float], list[int]]:
    """A level's per-channel gains, computed with Python floats one channel at a time (no SIMD
    exp whose last bit could vary by CPU), and the same gains on a 2^-16 integer grid."""
    table = log_gains.detach().double().cpu().tolist()
    n = len(table)
    lv = min(max(float(level), 0.0), n - 1.0)
    i = min(int(math.floor(lv)), n - 2)
    t = lv - i
    g = [math.exp((1 - t) * a + t * b) for a, b in zip(table[i], table[i + 1])]
    return g, [int(round(v * 2 ** GAIN_BITS)) for v in g]


def scale_thresholds(scale_table: Tensor) -> Tensor:
    """Integer thresholds T_k = floor(s_k * 2^(12+16)): scale_int * gain_int <= T_k exactly
    when the real scale * gain <= s_k (the left side is an integer)."""
    return torch.floor(scale_table.double().cpu()[:-1] * 2.0 ** (FRAC_BITS + GAIN_BITS)).long()


def scale_indexes(scales_int: Tensor, gain_int: list[int], thresholds: Tensor) -> Tensor:
    """CompressAI's ``build_indexes`` (index = L-1 - #{k < L-1 : scale <= s_k}) in int64."""
    s = scales_int.long().clamp_(0, 2 ** 30) * torch.tensor(gain_int).view(1, -1, 1, 1)
    # L-1 - #{s <= T_k} = #{T_k < s}: a binary search in exact integers
    return torch.searchsorted(thresholds, s.contiguous(), side="left").int()

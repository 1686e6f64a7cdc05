"""Inference forms of the transforms: the same functions as trained, arranged for CPU speed.

Measured on this project's 2-core AVX-512 machines (Kodak 768x512, float32): the transforms
are almost all of the coding time, and PyTorch's defaults leave about half of it on the
table. Channels-last lets oneDNN run every convolution as a blocked GEMM (the 5x5 layers
about 2x faster); GDN's reparametrisation (a bound and a square per call) is folded once
into a plain 1x1 convolution; and the last deconvolution, with only 3 output channels, is
rewritten as a 3x3 convolution to 12 channels followed by a pixel shuffle (the four output
phases of a stride-2 transposed convolution), which is 2-4x faster and exactly the same sum.
None of this changes what is computed, only the order of float additions (differences of
~1e-6), and the bitstream's symbols come from the integer hyper-synthesis anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CL = torch.channels_last


def bf16_is_fast(dev) -> bool:
    """Whether bfloat16 autocast speeds ``dev`` up rather than slowing it down.

    On an x86 CPU without bfloat16 dot products (AVX2 only, as some of our 2-core EPYC
    machines are) oneDNN emulates them: a 5x5 128->128 convolution took 18 s instead of
    0.2 s in float32 there. Such a CPU runs the transforms in float32 instead, which gives the
    exact coder's output; the caller asked for speed, not for bfloat16."""
    dev = torch.device(dev)
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class FoldedGDN(nn.Module):
    """GDN / inverse GDN with gamma and beta precomputed (inference only)."""

    def __init__(self, gdn: nn.Module):
        super().__init__()
        with torch.no_grad():
            beta = gdn.beta_reparam(gdn.beta)
            gamma = gdn.gamma_reparam(gdn.gamma)
        C = beta.numel()
        self.register_buffer("weight", gamma.reshape(C, C, 1, 1).contiguous(memory_format=CL))
        self.register_buffer("bias", beta.contiguous())
        self.inverse = bool(gdn.inverse)

    #: GDN is four passes over its input (square, 1x1 conv, root, product): on a full-size
    #: activation they run from memory, so they go in row bands of about this many bytes,
    #: which stay in cache between passes (2x faster at 128 x 256 x 384 on our machines).
    BAND_BYTES = 3 << 20

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad:  # the encoder's search (refine.py) differentiates through g_s
            norm = F.conv2d(x * x, self.weight, self.bias)
            return x * (norm.sqrt() if self.inverse else norm.rsqrt())
        rows = max(1, self.BAND_BYTES // max(1, x.shape[1] * x.shape[3] * x.element_size()))
        if x.shape[2] <= rows or not x.is_contiguous(memory_format=CL):
            return self._band(x, torch.empty_like(x))
        out = torch.empty_like(x, memory_format=CL)
        for r0 in range(0, x.shape[2], rows):
            self._band(x[:, :, r0:r0 + rows], out[:, :, r0:r0 + rows])
        return out

    def _band(self, x: Tensor, out: Tensor) -> Tensor:
        norm = F.conv2d(x * x, self.weight, self.bias)
        norm = norm.sqrt_() if self.inverse else norm.rsqrt_()
        return torch.mul(norm, x, out=out)


class SubpixelDeconv(nn.Module):
    """ConvTranspose2d(k=5, stride=2, padding=2, output_padding=1) as conv3x3 + pixel shuffle.

    Output row 2m+r sums input rows m-1..m+1 with kernel taps (4, 2, 0) for r = 0 and
    (-, 3, 1) for r = 1 (transposed convolution scatters input i to outputs 2i-2..2i+2);
    the same in columns. Each (r_y, r_x) phase becomes its own group of output channels of
    an ordinary convolution, and pixel_shuffle interleaves the phases."""

    TAPS = {0: {0: 4, 1: 2, 2: 0}, 1: {1: 3, 2: 1}}

    def __init__(self, deconv: nn.ConvTranspose2d):
        super().__init__()
        if (deconv.kernel_size, deconv.stride, deconv.padding, deconv.output_padding,
                deconv.groups, deconv.dilation) != ((5, 5), (2, 2), (2, 2), (1, 1), 1, (1, 1)):
            raise ValueError("SubpixelDeconv only rewrites k5 s2 p2 op1 transposed convolutions")
        w = deconv.weight.detach()  # (Cin, Cout, 5, 5)
        cin, cout = w.shape[:2]
        W = w.new_zeros(cout, 2, 2, cin, 3, 3)
        for ry, ty in self.TAPS.items():
            for jy, ky in ty.items():
                for rx, tx in self.TAPS.items():
                    for jx, kx in tx.items():
                        W[:, ry, rx, :, jy, jx] = w[:, :, ky, kx].t()
        self.register_buffer("weight", W.reshape(cout * 4, cin, 3, 3).contiguous(memory_format=CL))
        bias = deconv.bias.detach() if deconv.bias is not None else w.new_zeros(cout)
        self.register_buffer("bias", bias.repeat_interleave(4).contiguous())

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(F.conv2d(x, self.weight, self.bias, padding=1), 2)


def prepare(model: nn.Module) -> nn.Module:
    """Rewrite a loaded model's g_a and g_s in place for inference (never for training or
    export: the folded layers have no trainable parameters)."""
    from ._compressai import GDN

    for seq in (model.g_a, model.g_s):
        for i, layer in enumerate(seq):
            if isinstance(layer, GDN):
                seq[i] = FoldedGDN(layer)
        seq.to(memory_format=CL)
    last = model.g_s[-1]
    if isinstance(last, nn.ConvTranspose2d) and last.out_channels <= 16:
        model.g_s[-1] = SubpixelDeconv(last)
    return model

"""The latent codec of vaecodec 2: a checkerboard spatial context over the hyperprior.

He et al., "Checkerboard Context Model for Efficient Learned Image Compression" (CVPR 2021):
split the latent grid into two halves like the squares of a chess board. The *anchors*
((row + column) even) are coded first with the hyperprior's means and scales, exactly as in
vaecodec 1. The *non-anchors* are coded second, with means and scales refined from the
decoded anchors around them: each non-anchor has four anchors at distance 1 and eight more
within the 5 x 5 window, so the second half costs noticeably fewer bits where the image
has structure that the hyperprior (a 4x coarser grid) cannot see. Decoding is two parallel
passes, never pixel by pixel.

Dataflow (ungained latents; ``g``/``g'`` are the rate's gains as in model.py)::

    z_hat -> h_s -> (scales_h, means_h) --------------+----------------> anchors' params
                                                      v
    anchors' y_hat --[5x5 conv, anchors only]--> ctx -> EP(ctx, scales_h, means_h, step)
                                                      |
                                                      +--> + (scales_h, means_h) -> non-anchors'

``step`` is the rate's quantization step per channel (the inverse gain, constant over the
grid): a decoded anchor means something else at a coarse step than at a fine one, so the
refinement is told which. The last layer starts at zero, so an untrained context codes
exactly like vaecodec 1 and training can only move from there.

Every layer is a convolution or a LeakyReLU, so ``intnet.IntegerContext`` evaluates it in
exact integers: the coder's inputs for the non-anchors are the same bits on every machine,
as the hyperprior's are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: LeakyReLU slope; the integer network uses the dyadic 41/4096 (intnet.LEAK).
SLOPE = 0.01


def anchor_mask(h: int, w: int, device=None) -> Tensor:
    """1 at the anchors ((row + column) even), 0 at the non-anchors; shape [1, 1, h, w]."""
    i = torch.arange(h, device=device)[:, None]
    j = torch.arange(w, device=device)[None, :]
    return ((i + j) % 2 == 0).float()[None, None]


class CheckerboardContext(nn.Module):
    """The non-anchors' means and scales from the decoded anchors and the hyperprior."""

    def __init__(self, M: int = 192, ctx: int = 128, hidden: int = 256, kernel: int = 5):
        super().__init__()
        self.M, self.kernel = M, kernel
        self.ctx = nn.Conv2d(M, ctx, kernel, padding=kernel // 2)
        self.ep = nn.Sequential(
            nn.Conv2d(ctx + 3 * M, hidden, 1), nn.LeakyReLU(SLOPE),
            nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(SLOPE),
            nn.Conv2d(hidden, 2 * M, 1),
        )
        nn.init.zeros_(self.ep[-1].weight)
        nn.init.zeros_(self.ep[-1].bias)

    def forward(self, anchors: Tensor, scales_h: Tensor, means_h: Tensor, step: Tensor
                ) -> tuple[Tensor, Tensor]:
        """``anchors``: the decoded ungained latent, zero at the non-anchors; ``step``:
        [B, M, 1, 1]. Returns (scales, means) for every position; only the non-anchors'
        are used."""
        c = self.ctx(anchors)
        h = torch.cat([c, scales_h, means_h, step.expand_as(scales_h)], 1)
        ds, dm = self.ep(h).chunk(2, 1)
        return scales_h + ds, means_h + dm

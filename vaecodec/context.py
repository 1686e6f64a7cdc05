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


#: ELIC's uneven channel groups (He et al., CVPR 2022) for M = 192: small groups first,
#: where most of the energy and so most of the bits are, so later groups can lean on them.
ELIC_GROUPS = (16, 16, 32, 64, 64)


class GroupedCheckerboardContext(nn.Module):
    """Channel groups with a checkerboard in each: ELIC's space-channel context.

    The latent's channels are split into uneven groups, coded one after the other; inside
    each group the anchors come first, then the non-anchors. A group's anchors see the
    hyperprior and every earlier group in full (a 3x3 conv over them, ``chan``); its
    non-anchors see that too and their own group's anchors (a kxk conv, ``spat``). So
    decoding is 2 x groups parallel passes (group 0's anchors use the hyperprior alone).

    Every network ends in a zero-initialised layer that adds to the hyperprior's
    (scales, means) for the group's channels: untrained, it codes like vaecodec 1.
    """

    def __init__(self, M: int = 192, groups: tuple[int, ...] = ELIC_GROUPS, chan: int = 64,
                 spat: int = 64, hidden: int = 128, kernel: int = 5):
        super().__init__()
        if sum(groups) != M:
            raise ValueError(f"groups {groups} do not add up to M = {M}")
        self.M, self.groups, self.kernel = M, tuple(groups), kernel
        self.starts = [sum(groups[:k]) for k in range(len(groups))]
        self.chan = nn.ModuleList([nn.Identity()] + [
            nn.Conv2d(self.starts[k], chan, 3, padding=1) for k in range(1, len(groups))])
        self.spat = nn.ModuleList([nn.Conv2d(g, spat, kernel, padding=kernel // 2)
                                   for g in groups])

        def ep(cin: int, g: int) -> nn.Sequential:
            s = nn.Sequential(nn.Conv2d(cin, hidden, 1), nn.LeakyReLU(SLOPE),
                              nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(SLOPE),
                              nn.Conv2d(hidden, 2 * g, 1))
            nn.init.zeros_(s[-1].weight)
            nn.init.zeros_(s[-1].bias)
            return s

        self.ep_a = nn.ModuleList([nn.Identity()] + [
            ep(chan + 3 * g, g) for g in groups[1:]])
        self.ep_n = nn.ModuleList([
            ep((chan if k else 0) + spat + 3 * g, g) for k, g in enumerate(groups)])

    def slice(self, k: int, t: Tensor) -> Tensor:
        return t[:, self.starts[k]:self.starts[k] + self.groups[k]]

    def anchor_params(self, k: int, decoded: Tensor | None, scales_h: Tensor, means_h: Tensor,
                      step: Tensor) -> tuple[Tensor, Tensor]:
        """Group k's anchors' (scales, means) from the groups before it (``decoded``: their
        ungained y_hat, all positions) and the hyperprior's params for group k."""
        if k == 0:
            return scales_h, means_h
        h = torch.cat([self.chan[k](decoded), scales_h, means_h, step.expand_as(scales_h)], 1)
        ds, dm = self.ep_a[k](h).chunk(2, 1)
        return scales_h + ds, means_h + dm

    def nonanchor_params(self, k: int, decoded: Tensor | None, anchors: Tensor,
                         scales_h: Tensor, means_h: Tensor, step: Tensor
                         ) -> tuple[Tensor, Tensor]:
        """Group k's non-anchors' (scales, means): also from the group's own anchors
        (``anchors``: ungained y_hat, zero at the non-anchors)."""
        parts = [self.chan[k](decoded)] if k else []
        parts += [self.spat[k](anchors), scales_h, means_h, step.expand_as(scales_h)]
        ds, dm = self.ep_n[k](torch.cat(parts, 1)).chunk(2, 1)
        return scales_h + ds, means_h + dm

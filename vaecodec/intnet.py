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

Speed: float64 convolutions run at half the float32 rate and were a fifth of the coding time.
The same integer sums come faster from int8 matrix products with int32 accumulation (VNNI,
10-20x float64 here): weights and activations are split into balanced base-128 digits ("limbs",
each in [-64, 63]), every limb pair is one exact int8 GEMM (|sum| <= 2592 * 64 * 64 < 2^24,
and with both operands within +-64 even kernels that add 128 to one side and pair products in
saturating int16, as AVX2 int8 kernels do, cannot overflow), and the limb products are
recombined with shifts in int64. Integers make every order of summation the same, so this is
the float64 result to the bit; ``_exact_int8_gemm`` checks that once per process on worst-case
operands and the float64 path stays in use where it does not hold.
"""

from __future__ import annotations

import math
from functools import lru_cache

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
        self._gemm = None

    @property
    def gemm(self) -> _LimbGemm3x3:
        """Built on first use: splitting the weights into limbs costs ~0.1 s a layer, wasted
        on a cold start where float64 is the faster path anyway."""
        if self._gemm is None:
            self._gemm = _LimbGemm3x3(self.w, self.b, self.transposed, self.stride,
                                      self.padding, self.output_padding)
        return self._gemm

    def __call__(self, x: Tensor) -> Tensor:
        acc = self.gemm(x) if _int8_gemm_pays() and self.gemm.usable else self.reference(x)
        x = torch.floor(acc * self.down + 0.5)
        if self.act:
            x = torch.where(x < 0, torch.floor(x * LEAK), x)
        return x.clamp_(-ACT_LIMIT, ACT_LIMIT)

    def reference(self, x: Tensor) -> Tensor:
        """The accumulator by float64 convolution: exact, the definition the GEMM must match."""
        if self.transposed:
            return F.conv_transpose2d(x, self.w, self.b, self.stride, self.padding,
                                      self.output_padding)
        return F.conv2d(x, self.w, self.b, self.stride, self.padding)


LIMB_BITS = 7
LIMB_HALF = 1 << (LIMB_BITS - 1)   # limbs lie in [-64, 63]


def limbs(x: Tensor) -> list[Tensor]:
    """Integer tensor -> balanced base-128 digits d_i in [-64, 63], x = sum d_i * 128^i;
    as many digits as the largest |x| needs (3 for the usual activations, at most 4)."""
    x = x.long()
    out = []
    while True:
        d = ((x + LIMB_HALF) & ((1 << LIMB_BITS) - 1)) - LIMB_HALF
        out.append(d.to(torch.int8))
        x = (x - d) >> LIMB_BITS
        if not bool(x.any()):
            return out


class _LimbGemm3x3:
    """A layer's integer accumulator as int8 GEMMs over limbs (see the module docstring).

    Both layer kinds become a 3x3 stride-1 convolution: h_s's 5x5 stride-2 transposed
    convolutions as their four output phases (a 3x3 convolution to 4 x Cout channels, then a
    pixel shuffle; fastpath.SubpixelDeconv derives the same taps), its last layer as it is."""

    def __init__(self, w: Tensor, b: Tensor, transposed: bool, stride, padding, output_padding):
        from .fastpath import SubpixelDeconv

        self.shuffle = transposed
        if transposed:
            cin, cout = w.shape[:2]
            self.usable = (tuple(w.shape[2:]), tuple(stride), tuple(padding),
                           tuple(output_padding)) == ((5, 5), (2, 2), (2, 2), (1, 1))
            if not self.usable:
                return
            dec = nn.ConvTranspose2d(cin, cout, 5, 2, 2, 1).double()
            dec.weight.data.copy_(w)
            dec.bias.data.copy_(b)
            sub = SubpixelDeconv(dec)  # moves integers around, so exact
            w, b = sub.weight.contiguous(), sub.bias
        else:
            self.usable = (tuple(w.shape[2:]), tuple(stride), tuple(padding)) == \
                ((3, 3), (1, 1), (1, 1))
            if not self.usable:
                return
        cout, cin = w.shape[:2]
        # rows of the patch matrix are (ky, kx, cin), so the weights are laid out the same way
        wl = limbs(w.permute(2, 3, 1, 0).reshape(9 * cin, cout))
        self.usable = len(wl) == 2
        self.w = torch.cat(wl, 1).contiguous()             # (9 Cin, 2 Cout) int8
        self.b = b.long()
        self.cout = cout

    def __call__(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        xl = torch.stack(limbs(x)).permute(0, 1, 3, 4, 2)   # (L, N, H, W, C) int8
        L = xl.shape[0]
        xp = F.pad(xl.reshape(L * n, h, w, c), (0, 0, 1, 1, 1, 1))
        cols = torch.stack([xp[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)],
                           dim=3).reshape(L * n * h * w, 9 * c)
        p = torch._int_mm(cols, self.w).view(L, n * h * w, 2, self.cout)
        acc = self.b.expand(n * h * w, self.cout).clone()
        for i in range(L):
            for j in range(2):
                acc += p[i, :, j].long() << (LIMB_BITS * (i + j))
        acc = acc.view(n, h, w, self.cout).permute(0, 3, 1, 2).double()
        return F.pixel_shuffle(acc, 2) if self.shuffle else acc


@lru_cache(maxsize=1)
def _exact_int8_gemm() -> bool:
    """Whether this torch's int8 GEMM gives exact integer sums for operands in [-64, 63]
    (worst cases: all products of one sign, long reductions, odd shapes), checked against
    float64 (exact here: every sum is below 2^53)."""
    if not hasattr(torch, "_int_mm"):
        return False
    g = torch.Generator().manual_seed(0)
    try:
        for m, k, n in ((64, 2592, 64), (40, 1152, 24), (17, 72, 8)):
            a = torch.randint(-LIMB_HALF, LIMB_HALF, (m, k), generator=g, dtype=torch.int8)
            b = torch.randint(-LIMB_HALF, LIMB_HALF, (k, n), generator=g, dtype=torch.int8)
            a[0], b[:, 0], b[:, 1] = -LIMB_HALF, -LIMB_HALF, LIMB_HALF - 1
            a[1], a[2] = LIMB_HALF - 1, torch.where(torch.arange(k) % 2 == 0, -LIMB_HALF,
                                                    LIMB_HALF - 1).to(torch.int8)
            want = (a.double() @ b.double()).long()
            if not torch.equal(torch._int_mm(a, b).long(), want):
                return False
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return True


def _cpu_has_vnni() -> bool | None:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI, AMX), from
    /proc/cpuinfo; None where that cannot say (not Linux, not x86, or oneDNN's ISA capped by
    ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA, so that the kernels torch picks are unknown)."""
    import os

    from .machine import cpu_flags

    if os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"):
        return None
    flags = cpu_flags()
    return None if flags is None else bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


@lru_cache(maxsize=1)
def _int8_gemm_pays() -> bool:
    """Exact, and faster than float64 here. Both give the same integers, so the choice is
    only about time. A layer costs 4-6 int8 GEMMs (limb pairs) against one float64 GEMM:
    with VNNI-class kernels int8 is ~20x faster and wins; without them (AVX2 only, or
    generic kernels as under ONEDNN_MAX_CPU_ISA=SSE41: ~2.5x) float64 is faster. The CPU's
    flags decide where they can, which keeps the probes (~0.4 s on a 2-core AVX2 machine) off
    a cold start; elsewhere a short race does."""
    import time

    vnni = _cpu_has_vnni()
    if vnni is False or not _exact_int8_gemm():
        return False
    if vnni:
        return True
    a, b = torch.ones(256, 1152, dtype=torch.int8), torch.ones(1152, 256, dtype=torch.int8)
    ad, bd = a.double(), b.double()

    def best(f) -> float:
        t = []
        for _ in range(3):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
        return min(t)

    return 5 * best(lambda: torch._int_mm(a, b)) < best(lambda: ad @ bd)


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


class IntegerContext:
    """The checkerboard context (context.py) evaluated exactly in integers, as h_s is.

    Its inputs are already integers on the 2^-12 grid: the decoded anchors (the ungained
    latent, rounded to the grid), h_s's integer scales and means, and the rate's step; its
    outputs are the non-anchors' scales and means on the same grid, so the CDF indexes
    follow by the same integer comparison as the anchors'.

    Speed: only the non-anchors' outputs are needed, and at a non-anchor only the taps of
    the context's kxk window that fall on anchors are non-zero (12 of 25 for 5 x 5). So the
    network runs as matrix products over the non-anchor positions alone, its first layer
    over the gathered anchor taps: a quarter of the full convolution's products, the same
    integer sums (``reference`` is the plain convolution it must equal)."""

    def __init__(self, context: nn.Module):
        self.layer = _IntLayer(context.ctx, act=False)
        k = context.kernel
        r = k // 2
        self.taps = [(dy, dx) for dy in range(k) for dx in range(k) if (dy + dx - 2 * r) % 2]
        w = self.layer.w                                    # (C, M, k, k) integers
        self.w_taps = torch.cat([w[:, :, dy, dx] for dy, dx in self.taps], 1).t().contiguous()
        self.r = r
        convs = [m for m in context.ep if isinstance(m, nn.Conv2d)]
        self.ep = [_IntLayer(c, act=i < len(convs) - 1) for i, c in enumerate(convs)]
        self.ep_w = [layer.w[:, :, 0, 0].t().contiguous() for layer in self.ep]

    @staticmethod
    def _finish(layer: _IntLayer, acc: Tensor) -> Tensor:
        """A layer's rounding, activation and clamp, on rows (positions) x channels."""
        x = torch.floor(acc * layer.down.view(1, -1) + 0.5)
        if layer.act:
            x = torch.where(x < 0, torch.floor(x * LEAK), x)
        return x.clamp_(-ACT_LIMIT, ACT_LIMIT)

    def __call__(self, anchors: Tensor, scales_h: Tensor, means_h: Tensor, step: Tensor
                 ) -> tuple[Tensor, Tensor]:
        """All arguments integer-valued float64 on the 2^-12 grid, [1, M, H, W] (``step``
        [1, M, 1, 1]); ``anchors`` zero at the non-anchors. Returns (scales, means) with the
        non-anchors' refined and the anchors' as h_s gave them."""
        with torch.inference_mode():
            _, M, H, W = anchors.shape
            ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
            sel = ((ii + jj) % 2 == 1).reshape(-1)
            pi, pj = ii.reshape(-1)[sel], jj.reshape(-1)[sel]
            r = self.r
            a = F.pad(anchors[0], (r, r, r, r)).permute(1, 2, 0)          # (H+2r, W+2r, M)
            cols = torch.cat([a[pi + dy, pj + dx] for dy, dx in self.taps], 1)
            x = self._finish(self.layer, torch.addmm(self.layer.b, cols, self.w_taps))
            flat = lambda t: t[0].reshape(M, -1)[:, sel].t()          # noqa: E731
            x = torch.cat([x, flat(scales_h), flat(means_h),
                           step[0, :, 0, 0].expand(x.shape[0], M)], 1)
            for layer, w in zip(self.ep, self.ep_w):
                x = self._finish(layer, torch.addmm(layer.b, x, w))
            ds, dm = x.t().chunk(2, 0)
            out = []
            for base, d in ((scales_h, ds), (means_h, dm)):
                o = base[0].reshape(M, -1).clone()
                o[:, sel] = (o[:, sel] + d).clamp_(-ACT_LIMIT, ACT_LIMIT)
                out.append(o.view(1, M, H, W))
            return out[0], out[1]

    def reference(self, anchors: Tensor, scales_h: Tensor, means_h: Tensor, step: Tensor
                  ) -> tuple[Tensor, Tensor]:
        """The definition: the float64 convolutions over the whole grid, non-anchors kept."""
        with torch.inference_mode():
            x = torch.cat([self.layer(anchors), scales_h, means_h, step.expand_as(scales_h)], 1)
            for layer in self.ep:
                x = layer(x)
            ds, dm = x.chunk(2, 1)
            non = 1 - _anchor_mask(*anchors.shape[-2:]).double()
            return ((scales_h + ds * non).clamp_(-ACT_LIMIT, ACT_LIMIT),
                    (means_h + dm * non).clamp_(-ACT_LIMIT, ACT_LIMIT))


def _anchor_mask(h: int, w: int) -> Tensor:
    i = torch.arange(h)[:, None]
    j = torch.arange(w)[None, :]
    return ((i + j) % 2 == 0)[None, None]


def _finish_rows(layer: _IntLayer, acc: Tensor) -> Tensor:
    """A layer's rounding, activation and clamp, on rows (positions) x channels."""
    x = torch.floor(acc * layer.down.view(1, -1) + 0.5)
    if layer.act:
        x = torch.where(x < 0, torch.floor(x * LEAK), x)
    return x.clamp_(-ACT_LIMIT, ACT_LIMIT)


class _GatheredConv:
    """A kxk convolution evaluated at chosen positions only, as one matrix product over the
    gathered taps. ``sparse``: the input is zero off the anchors and the outputs are wanted
    at non-anchors, so only the taps at odd distance are gathered (12 of 25 for 5 x 5)."""

    def __init__(self, conv: nn.Conv2d, act: bool, sparse: bool):
        self.layer = _IntLayer(conv, act)
        k = conv.kernel_size[0]
        self.r = r = k // 2
        self.taps = [(dy, dx) for dy in range(k) for dx in range(k)
                     if not sparse or (dy + dx - 2 * r) % 2]
        w = self.layer.w
        self.w = torch.cat([w[:, :, dy, dx] for dy, dx in self.taps], 1).t().contiguous()

    def __call__(self, x: Tensor, pi: Tensor, pj: Tensor) -> Tensor:
        r = self.r
        a = F.pad(x[0], (r, r, r, r)).permute(1, 2, 0)
        cols = torch.cat([a[pi + dy, pj + dx] for dy, dx in self.taps], 1)
        return _finish_rows(self.layer, torch.addmm(self.layer.b, cols, self.w))


class IntegerGroupedContext:
    """The channel-group checkerboard context (context.GroupedCheckerboardContext) in exact
    integers, as IntegerContext is for the single group: inputs and outputs on the 2^-12
    grid, each pass's networks evaluated at that pass's positions only (anchors or
    non-anchors), ``reference`` the whole-grid float64 convolutions they must equal."""

    def __init__(self, context: nn.Module):
        self.groups = context.groups
        self.chan = [None] + [_GatheredConv(c, act=False, sparse=False)
                              for c in list(context.chan)[1:]]
        self.spat = [_GatheredConv(c, act=False, sparse=True) for c in context.spat]

        def ep(seq) -> list[tuple[_IntLayer, Tensor]]:
            convs = [m for m in seq if isinstance(m, nn.Conv2d)]
            layers = [_IntLayer(c, act=i < len(convs) - 1) for i, c in enumerate(convs)]
            return [(lay, lay.w[:, :, 0, 0].t().contiguous()) for lay in layers]

        self.ep_a = [None] + [ep(s) for s in list(context.ep_a)[1:]]
        self.ep_n = [ep(s) for s in context.ep_n]

    def __call__(self, k: int, anchors_pass: bool, decoded: Tensor | None,
                 anchors: Tensor | None, scales_h: Tensor, means_h: Tensor, step: Tensor
                 ) -> tuple[Tensor, Tensor]:
        """Group k's (scales, means) [1, g, H, W]: the pass's positions refined, the others
        as h_s gave them. ``decoded``: the earlier groups, ``anchors``: this group's
        (non-anchor pass only), ``step``: [1, g, 1, 1]; all integer-valued float64."""
        if k == 0 and anchors_pass:
            return scales_h, means_h
        with torch.inference_mode():
            _, g, H, W = scales_h.shape
            ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
            sel = ((ii + jj) % 2 == (0 if anchors_pass else 1)).reshape(-1)
            pi, pj = ii.reshape(-1)[sel], jj.reshape(-1)[sel]
            flat = lambda t: t[0].reshape(g, -1)[:, sel].t()          # noqa: E731
            x = [self.chan[k](decoded, pi, pj)] if k else []
            if not anchors_pass:
                x.append(self.spat[k](anchors, pi, pj))
            x = torch.cat(x + [flat(scales_h), flat(means_h), step[0, :, 0, 0].expand(len(pi), g)],
                          1)
            for layer, w in (self.ep_a if anchors_pass else self.ep_n)[k]:
                x = _finish_rows(layer, torch.addmm(layer.b, x, w))
            ds, dm = x.t().chunk(2, 0)
            out = []
            for base, d in ((scales_h, ds), (means_h, dm)):
                o = base[0].reshape(g, -1).clone()
                o[:, sel] = (o[:, sel] + d).clamp_(-ACT_LIMIT, ACT_LIMIT)
                out.append(o.view(1, g, H, W))
            return out[0], out[1]

    def reference(self, k: int, anchors_pass: bool, decoded: Tensor | None,
                  anchors: Tensor | None, scales_h: Tensor, means_h: Tensor, step: Tensor
                  ) -> tuple[Tensor, Tensor]:
        """The definition: float64 convolutions over the whole grid, the pass's positions kept."""
        if k == 0 and anchors_pass:
            return scales_h, means_h
        with torch.inference_mode():
            x = [self.chan[k].layer(decoded)] if k else []
            if not anchors_pass:
                x.append(self.spat[k].layer(anchors))
            x = torch.cat(x + [scales_h, means_h, step.expand_as(scales_h)], 1)
            for layer, _ in (self.ep_a if anchors_pass else self.ep_n)[k]:
                x = layer(x)
            ds, dm = x.chunk(2, 1)
            m = _anchor_mask(*scales_h.shape[-2:]).double()
            keep = m if anchors_pass else 1 - m
            return ((scales_h + ds * keep).clamp_(-ACT_LIMIT, ACT_LIMIT),
                    (means_h + dm * keep).clamp_(-ACT_LIMIT, ACT_LIMIT))

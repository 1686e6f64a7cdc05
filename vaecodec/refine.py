"""Encoder-side search: fit one image's latent to that image's own rate-distortion cost.

The analysis transform is amortised: one network trained to give good latents for the
average training crop, at a cost of a few percent of rate on any particular image (the
"amortisation gap"). The decoder is fixed by the file format: g_s, the integer
hyper-synthesis and the integer context. So the encoder is free to pick other y symbols,
and with the gradient of the decoder's own rate-distortion cost it can pick better ones.
This is the learned-codec form of what cwebp's ``-m 6`` or an AV1 encoder's slow presets
do: the format and the decoder do not change, only the encoder works harder.

What is searched are the *symbols*: each latent's offset from the mean the decoder will
use for it. With a context model that mean (and the scale) depends on symbols decoded
before it (earlier channel groups, the group's anchors), so every iteration runs the
decoder's own passes in float and with gradients, in the decoder's order: group by group,
anchors then non-anchors, each pass's means and scales from what the passes before it
decoded (``_decode_soft``). The rate term is therefore the one the range coder pays, and
its gradient also flows through the context into the symbols it depends on. (Pricing
every symbol with the hyperprior's params instead, as a hyperprior-only search does,
optimises a rate the coder never pays: with the context models it found nothing.) Scales
are the coder's table entries (straight-through), so the bits are the coder's to within
the float context's rounding.

Rounding has no useful gradient, so the search uses stochastic Gumbel annealing (Yang,
Bamler, Mandt, "Improving Inference for Neural Image Compression", NeurIPS 2020): each
symbol is a soft, randomly drawn mix of its two neighbouring integers, and the temperature
falls so that the mix ends up as a hard choice.

z can be searched too when the image is one search tile (``search_z``, off by default:
``benchmarks/search_z.py`` found it better only at the lowest rates): its symbols are
priced by the entropy bottleneck and go through the hyper-synthesis (the integer
network's values, the float one's gradient) into the means and scales of y's passes, so a
z symbol is worth changing when what it saves or costs in y's bits and in the pixels
outweighs its own bits. Larger
images keep the analysis's z: a z symbol reaches over several y tiles, which are searched
one at a time.

The result is turned back into a latent whose nearest rounding under the *integer* networks
gives the searched symbols, so the file is coded exactly as any other (CRC, every machine).
The caller compares the result with the plain encode and keeps the better
(``codec.code_at``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import metrics
from .intnet import FRAC_BITS, gains_fixed
from .model import Y_STRIDE, windows

#: Adam step, in quantisation steps of the gained latent; the temperature's start and end.
LR, TAU_START, TAU_END = 0.05, 0.5, 0.02
#: Adam step of z's search (Adam moves every element by about its step, whatever its
#: gradient's size: z's must be smaller than y's not to wander).
LR_Z = 0.01
#: z's symbols annealed like y's (True), or rounded with a straight-through gradient, so
#: that y's passes always see the z the decoder will (benchmarks/search_z: what each gave).
Z_ANNEAL = False
#: Latents per side of a search tile (768 pixels: Kodak is one tile), and the context
#: around it. g_s reaches under 2 latents (see model.HALO_SYNTHESIS), so a 4-latent halo
#: lets the tile's border pixels be judged on (almost) the decoder's real output.
TILE, HALO = 48, 4


def refine(model, y: Tensor, z: Tensor, x: Tensor, level: float, iterations: int,
           seed: int = 0, autocast: bool = True, coding_tile: int = 64,
           search_z: bool = False) -> tuple[Tensor, Tensor]:
    """A better (ungained latent, ungained z) for image ``x`` (1 x 3 x H x W, uint8 or float
    in [0, 1], unpadded; ``y`` covers its padded size) at rate ``level``, minimising the
    training objective ``lambda * 255^2 * MSE + bpp`` at that level's lambda, with bits
    priced as the model's latent codec codes them.

    Runs tile by tile, each tile with its neighbours' current symbols as fixed context, so
    memory stays bounded on big images; an image of at most TILE x TILE latents is searched
    whole, and only then is z searched as well (``search_z``; otherwise ``z`` comes back as
    it was given). The same inputs and seed give the same result on one machine. bfloat16
    autocast for g_s only where it is fast (``fastpath.bf16_is_fast``). ``coding_tile``: the
    container's y tile in latents (a tile's context sees that tile alone), so that the
    returned latent codes to exactly the searched symbols on big images too."""
    from .fastpath import bf16_is_fast

    autocast = autocast and bf16_is_fast(x.device)
    dev = x.device
    with torch.inference_mode(False), torch.no_grad():
        start = _start(model, y, z, level, coding_tile)
        v = start["offsets"].to(dev)
        sh, mh = start["scales_h"].to(dev), start["means_h"].to(dev)
        gy, gy_inv = start["gy"].to(dev), start["gy_inv"].to(dev)
    lam = model.lambda_for(level)
    H, W = v.shape[-2:]
    gen = torch.Generator().manual_seed(seed)
    hyper = _FloatHyper(model, z.to(dev), level) if search_z and H <= TILE and W <= TILE \
        else None
    with torch.inference_mode(False), torch.enable_grad():
        for t0 in range(0, H, TILE):
            for s0 in range(0, W, TILE):
                _search_tile(model, v, sh, mh, gy, gy_inv, x, lam, int(iterations), gen, autocast,
                             (t0, min(H, t0 + TILE)), (s0, min(W, s0 + TILE)), hyper)
    with torch.no_grad():
        if hyper is not None:
            z = hyper.result().to(z.device, z.dtype)
            start = _start(model, y, z, level, coding_tile)  # the integer networks' view of it
        return _latent_for(model, start, torch.round(v).cpu(), level), z


class _FloatHyper:
    """z's side of the search: the gained z as the parameter (annealed around the entropy
    bottleneck's medians, as the bottleneck rounds it), its bits, and the float
    hyper-synthesis's ungained (scales, means) of y from it."""

    def __init__(self, model, z: Tensor, level: float) -> None:
        self.model, self.level = model, level
        lv = torch.full((1,), float(level), device=z.device)
        _, _, self.gz, self.gz_inv = (g.to(z.device) for g in model.gains(lv))
        eb = model.entropy_bottleneck
        self.eb, self.h_s = eb, model.h_s
        self.medians = eb._get_medians().detach().reshape(1, -1, 1, 1).to(z.device)
        self.w = (z.float() * self.gz - self.medians).detach().requires_grad_(True)

    def __call__(self, soft_round) -> tuple[Tensor, Tensor, Tensor]:
        """-> (z's bits, ungained scales, ungained means), with z's symbols drawn by
        ``soft_round`` (the same annealing as y's)."""
        zh = soft_round(self.w) + self.medians
        c = zh.size(1)
        lik, _, _ = self.eb._likelihood(zh.permute(1, 0, 2, 3).reshape(c, 1, -1))
        lik = self.eb.likelihood_lower_bound(lik) if self.eb.use_likelihood_bound else lik
        bits = -torch.log2(lik.clamp_min(1e-9)).sum()
        scales, means = self.h_s(zh * self.gz_inv).chunk(2, 1)
        # The values are the integer networks' for z's nearest symbols (the decoder's view:
        # the float h_s is up to a tenth of a step off, many steps once gained at high
        # rates), the gradient the float network's.
        with torch.no_grad():
            exact = self.model._hyper(torch.round(self.w) + self.medians, self.level, True)
        unit = 2.0 ** -FRAC_BITS
        scales, means = (f + (e.to(f.device, f.dtype) * unit - f).detach()
                         for f, e in zip((scales, means), exact))
        return bits, scales, means

    def result(self) -> Tensor:
        """The searched symbols as an ungained z that ``code_z`` rounds back to them."""
        return (torch.round(self.w.detach()) + self.medians) / self.gz


def _start(model, y: Tensor, z: Tensor, level: float, coding_tile: int) -> dict[str, Tensor]:
    """The plain encode as the decoder sees it: the hyperprior's (ungained) scales and means
    as floats, the gains, and each latent's offset from the mean its pass will give it (the
    integer networks' means, passes in coding order, earlier passes rounded to nearest)."""
    lv = torch.full((1,), float(level), device=z.device)
    zg = z.float() * model.gains(lv)[2]
    z_hat_g = model.entropy_bottleneck.decompress(model.entropy_bottleneck.compress(zg),
                                                  zg.shape[-2:])
    scales_i, means_i = model._hyper(z_hat_g, level, True)
    g, _ = gains_fixed(model.y_log_gain, level)
    g_inv, _ = gains_fixed(model.y_log_gain_inv, level)
    gy = torch.tensor(g, dtype=torch.float32).view(1, -1, 1, 1)
    y_g = y.float().cpu() * gy
    offsets = torch.zeros_like(y_g)

    def code(tile: tuple, c: slice, part: Tensor, idx: Tensor, mu: Tensor) -> Tensor:
        r = y_g[tile][:, c] - mu
        offsets[tile][:, c][part] = r[part]
        return torch.round(r).int()

    unit = 2.0 ** -FRAC_BITS
    start = {"offsets": offsets, "scales_h": (scales_i * unit).float(),
             "means_h": (means_i * unit).float(), "scales_i": scales_i, "means_i": means_i,
             "gy": gy, "gy_inv": torch.tensor(g_inv, dtype=torch.float32).view(1, -1, 1, 1),
             "coding_tile": coding_tile}
    _code_by_tile(model, start, level, code)
    return start


def _latent_for(model, start: dict[str, Tensor], symbols: Tensor, level: float) -> Tensor:
    """The ungained latent whose nearest rounding, under the integer networks' means, is
    ``symbols``: each symbol plus the mean its pass gives it, un-gained."""
    means = torch.zeros_like(symbols)
    sym = symbols.int()

    def code(tile: tuple, c: slice, part: Tensor, idx: Tensor, mu: Tensor) -> Tensor:
        means[tile][:, c][part] = mu[part]
        return sym[tile][:, c]

    _code_by_tile(model, start, level, code)
    return (symbols + means) / start["gy"]


def _code_by_tile(model, start: dict, level: float, code) -> None:
    """Run the coder's passes (integer networks) in its own tiles, as ``compress_tiles``
    does (a tile's context sees that tile alone), calling ``code(tile, channels, part,
    indexes, gained means)`` for each pass; it returns the group's symbols (all of them:
    only ``part`` of them is read before the next pass)."""
    H, W = start["scales_i"].shape[-2:]
    for t0, t1, s0, s1, *_ in windows(H, W, start["coding_tile"], 0):
        tile = (..., slice(t0, t1), slice(s0, s1))

        def step(c: slice, part: Tensor, idx: Tensor, mu: Tensor, prev: Tensor | None,
                 tile: tuple = tile) -> Tensor:
            out = code(tile, c, part, idx, mu)
            return out if prev is None else torch.where(part, out, prev)

        model._code_passes(start["scales_i"][tile], start["means_i"][tile], level, True, step)


def _decode_soft(model, q: Tensor, sh: Tensor, mh: Tensor, gy: Tensor, gy_inv: Tensor
                 ) -> tuple[Tensor, Tensor]:
    """The decoder's passes in float over (soft) symbols ``q`` (gained offsets from the
    means): returns each latent's gained scale and the decoded ungained latent. Means and
    scales of a pass come from what earlier passes decoded, so gradients reach through the
    context into the symbols it reads."""
    ctx = getattr(model, "context", None)
    if ctx is None:  # the hyperprior: one pass
        return sh * gy, (q + mh * gy) * gy_inv
    from .context import GroupedCheckerboardContext, anchor_mask

    mask = anchor_mask(*q.shape[-2:], device=q.device).bool()
    if not isinstance(ctx, GroupedCheckerboardContext):  # one checkerboard over all channels
        anchors = (q + mh * gy) * gy_inv * mask
        sc, mc = ctx(anchors, sh, mh, gy_inv)
        s, m = torch.where(mask, sh, sc), torch.where(mask, mh, mc)
        return s * gy, (q + m * gy) * gy_inv
    scales, decoded = [], []
    for k in range(len(ctx.groups)):
        qk, g, gi, shk, mhk = (ctx.slice(k, t) for t in (q, gy, gy_inv, sh, mh))
        prev = torch.cat(decoded, 1) if k else None
        sa, ma = ctx.anchor_params(k, prev, shk, mhk, gi)
        sn, mn = ctx.nonanchor_params(k, prev, (qk + ma * g) * gi * mask, shk, mhk, gi)
        s, m = torch.where(mask, sa, sn), torch.where(mask, ma, mn)
        scales.append(s * g)
        decoded.append((qk + m * g) * gi)
    return torch.cat(scales, 1), torch.cat(decoded, 1)


def _round_ste(u: Tensor) -> Tensor:
    return u + (torch.round(u) - u).detach()


def _table_scale(gc, sigma: Tensor) -> Tensor:
    """The coder's scale for ``sigma``: the smallest table entry at or above it (CompressAI's
    ``build_indexes``), with sigma's own gradient (straight through)."""
    table = gc.scale_table.to(sigma.device, sigma.dtype)
    idx = torch.bucketize(sigma.detach().contiguous(), table).clamp_(max=table.numel() - 1)
    return sigma + (table[idx] - sigma).detach()


def _search_tile(model, v: Tensor, sh: Tensor, mh: Tensor, gy: Tensor, gy_inv: Tensor,
                 x: Tensor, lam: float, n: int, gen: torch.Generator, autocast: bool,
                 rows: tuple[int, int], cols: tuple[int, int],
                 hyper: _FloatHyper | None = None) -> None:
    """Optimise the symbols v[rows, cols] in place; the halo's symbols are fixed context.
    Bits count the tile's own symbols; distortion is judged on the pixels of the tile and of
    its halo except the outermost latent's worth (whose own context is cut off). With
    ``hyper`` (the whole image is this tile) z's symbols are optimised with them."""
    H, W = v.shape[-2:]
    (t0, t1), (s0, s1) = rows, cols
    a0, a1, b0, b1 = max(0, t0 - HALO), min(H, t1 + HALO), max(0, s0 - HALO), min(W, s1 + HALO)
    region = (..., slice(a0, a1), slice(b0, b1))
    inner = torch.zeros((1, 1, a1 - a0, b1 - b0), dtype=torch.bool, device=v.device)
    inner[..., t0 - a0:t1 - a0, s0 - b0:s1 - b0] = True
    fixed = v[region].clone()
    sh, mh = sh[region], mh[region]
    w = fixed.clone().requires_grad_(True)
    # pixels judged: the region's, less one latent on each side that is not an image border
    p = Y_STRIDE
    py0 = (a0 + (a0 > 0)) * p
    py1 = min((a1 - (a1 < H)) * p, x.shape[-2])
    px0 = (b0 + (b0 > 0)) * p
    px1 = min((b1 - (b1 < W)) * p, x.shape[-1])
    target = x[..., py0:py1, px0:px1]
    if not target.is_floating_point():  # 8-bit images stay 8-bit: 4x less memory at 24 MP
        target = target.float() / 255
    n_px = x.shape[-2] * x.shape[-1]  # bpp is per pixel of the whole image
    gc = model.gaussian_conditional
    lower = float(gc.lower_bound_scale.bound)
    opt = torch.optim.Adam([{"params": [w]}] + ([{"params": [hyper.w], "lr": LR_Z}]
                                                 if hyper is not None else []), lr=LR)
    for it in range(n):
        tau = TAU_START * (TAU_END / TAU_START) ** (it / max(1, n - 1))

        def soft_round(u: Tensor) -> Tensor:
            """Stochastic Gumbel annealing: a soft, random mix of u's two neighbouring
            integers, harder as tau falls."""
            lo = torch.floor(u.detach())
            d = (u - lo).clamp(1e-4, 1 - 1e-4)
            logits = torch.stack([-torch.atanh(d), -torch.atanh(1 - d)]) / tau
            noise = torch.rand(logits.shape, generator=gen).clamp_(1e-9, 1).to(u.device)
            gumbel = -torch.log(-torch.log(noise))
            return lo + torch.softmax(logits + gumbel, 0)[1]

        q = torch.where(inner, soft_round(w), fixed)
        bits = 0.0
        if hyper is not None:
            bits, sh, mh = hyper(soft_round if Z_ANNEAL else _round_ste)
        sigma, latent = _decode_soft(model, q, sh, mh, gy, gy_inv)
        sigma = _table_scale(gc, sigma.clamp_min(lower))
        lik = gc._likelihood(q, sigma)
        bits = bits + -torch.log2(lik.clamp_min(1e-9)).masked_select(inner.expand_as(lik)).sum()
        with torch.autocast(w.device.type, dtype=torch.bfloat16, enabled=autocast):
            x_hat = model.g_s(latent.contiguous(memory_format=torch.channels_last))
        x_hat = x_hat.float()[..., py0 - a0 * p:py1 - a0 * p, px0 - b0 * p:px1 - b0 * p]
        mse_sum = (x_hat - target).pow(2).sum() / 3
        loss = metrics.rd_cost(lam, metrics.PEAK ** 2 * mse_sum / n_px, bits / n_px)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        v[..., t0:t1, s0:s1] = w.detach()[..., t0 - a0:t1 - a0, s0 - b0:s1 - b0]

"""Encoder-side search: fit one image's latent to that image's own rate-distortion cost.

The analysis transform is amortised: one network trained to give good latents for the
average training crop, at a cost of a few percent of rate on any particular image (the
"amortisation gap"), more for a model as young as ours. The decoder is fixed by the file
format: g_s, and the means and scales the integer hyper-synthesis derives from z. So the
encoder is free to pick other y symbols, and with the gradient of the decoder's own
rate-distortion cost it can pick better ones. This is the learned-codec form of what
cwebp's ``-m 6`` or an AV1 encoder's slow presets do: the format and the decoder do not
change, only the encoder works harder.

Rounding has no useful gradient, so the search uses stochastic Gumbel annealing (Yang,
Bamler, Mandt, "Improving Inference for Neural Image Compression", NeurIPS 2020): each
latent is a soft, randomly drawn mix of its two neighbouring integers, and the temperature
falls so that the mix ends up as a hard choice. Straight-through rounding and a purely
continuous relaxation both did worse here (kodim01 at quality 50, 40 iterations: rate-
distortion cost +4% / -0.8% against -2% with annealing).

z, and with it every mean and scale, stays as the analysis made it: the search sees exactly
the entropy model the decoder will use, so its rate estimate is the coder's, and the
rounding at the end (``compress_latent``) is the ordinary one. The caller compares the
result with the plain encode and keeps the better (``codec.code_at``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import metrics
from .intnet import gains_fixed
from .model import Y_STRIDE

#: Adam step, in quantisation steps of the gained latent; the temperature's start and end.
LR, TAU_START, TAU_END = 0.05, 0.5, 0.02
#: Latents per side of a search tile (768 pixels: Kodak is one tile), and the context
#: around it. g_s reaches under 2 latents (see model.HALO_SYNTHESIS), so a 4-latent halo
#: lets the tile's border pixels be judged on (almost) the decoder's real output.
TILE, HALO = 48, 4


def refine(model, y: Tensor, z: Tensor, x: Tensor, level: float, iterations: int,
           seed: int = 0, autocast: bool = True) -> Tensor:
    """A better ungained latent for image ``x`` (1 x 3 x H x W, uint8 or float in [0, 1],
    unpadded; ``y`` covers its padded size) at rate ``level``, minimising the training objective
    ``lambda * 255^2 * MSE + bpp`` at that level's lambda.

    Runs tile by tile, each tile with its neighbours' current latents as fixed context, so
    memory stays bounded on big images; an image of at most TILE x TILE latents is searched
    whole. The same inputs and seed give the same result on one machine. bfloat16 autocast
    only where it is fast (``fastpath.bf16_is_fast``): emulated on an AVX2-only CPU it made an
    effort-2 search ~15x slower than float32."""
    from .fastpath import bf16_is_fast

    autocast = autocast and bf16_is_fast(x.device)
    with torch.inference_mode(False), torch.enable_grad():
        dev = x.device
        y = y.detach().to(dev, torch.float32).clone()
        z = z.detach().to(model.lambdas.device, torch.float32).clone()
        means, scales, gy, gy_inv = (t.to(dev) for t in _decoder_view(model, z, level))
        lam = model.lambda_for(level)
        u = y * gy
        H, W = u.shape[-2:]
        gen = torch.Generator().manual_seed(seed)
        for t0 in range(0, H, TILE):
            for s0 in range(0, W, TILE):
                _search_tile(model, u, means, scales, gy_inv, x, lam, iterations, gen, autocast,
                             (t0, min(H, t0 + TILE)), (s0, min(W, s0 + TILE)))
        return (u / gy).detach()


def _decoder_view(model, z: Tensor, level: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The means and (table) scales the decoder will use for the gained y, and the gains."""
    with torch.no_grad():
        _, idx, means = model.code_z(z, level)
        scales = model.gaussian_conditional.scale_table.cpu()[idx.long()]
        gy = torch.tensor(gains_fixed(model.y_log_gain, level)[0]).view(1, -1, 1, 1)
        gy_inv = torch.tensor(gains_fixed(model.y_log_gain_inv, level)[0]).view(1, -1, 1, 1)
    return means.clone(), scales.clone(), gy, gy_inv


def _search_tile(model, u: Tensor, means: Tensor, scales: Tensor, gy_inv: Tensor, x: Tensor,
                 lam: float, iterations: int, gen: torch.Generator, autocast: bool,
                 rows: tuple[int, int], cols: tuple[int, int]) -> None:
    """Optimise u[rows, cols] in place; distortion is judged on the pixels of the tile and
    of its halo except the outermost latent's worth (whose own context is cut off)."""
    H, W = u.shape[-2:]
    (t0, t1), (s0, s1) = rows, cols
    a0, a1, b0, b1 = max(0, t0 - HALO), min(H, t1 + HALO), max(0, s0 - HALO), min(W, s1 + HALO)
    inner = (slice(t0 - a0, t1 - a0), slice(s0 - b0, s1 - b0))
    region = (..., slice(a0, a1), slice(b0, b1))
    fixed = u[region].clone()
    mu, sigma = means[region][(...,) + inner], scales[region][(...,) + inner]
    v = (u[region][(...,) + inner] - mu).clone().requires_grad_(True)
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
    opt = torch.optim.Adam([v], lr=LR)
    for it in range(iterations):
        tau = TAU_START * (TAU_END / TAU_START) ** (it / max(1, iterations - 1))
        lo = torch.floor(v.detach())
        d = (v - lo).clamp(1e-4, 1 - 1e-4)
        logits = torch.stack([-torch.atanh(d), -torch.atanh(1 - d)]) / tau
        noise = torch.rand(logits.shape, generator=gen).clamp_(1e-9, 1).to(v.device)
        gumbel = -torch.log(-torch.log(noise))
        soft = lo + torch.softmax(logits + gumbel, 0)[1]
        bits = -torch.log2(gc._likelihood(soft, sigma).clamp_min(1e-9)).sum()
        latent = fixed.clone()
        latent[(...,) + inner] = soft + mu
        with torch.autocast(v.device.type, dtype=torch.bfloat16, enabled=autocast):
            x_hat = model.g_s(latent * gy_inv)
        x_hat = x_hat.float()[..., py0 - a0 * p:py1 - a0 * p, px0 - b0 * p:px1 - b0 * p]
        mse_sum = (x_hat - target).pow(2).sum() / 3
        loss = metrics.rd_cost(lam, metrics.PEAK ** 2 * mse_sum / n_px, bits / n_px)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        u[(...,) + (slice(t0, t1), slice(s0, s1))] = v.detach() + mu


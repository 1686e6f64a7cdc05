"""Fitting the checkerboard context on cached latents, with the transforms frozen.

Why this is cheap: with g_a, h_a, h_s and g_s fixed and the latent rounded around its mean,
the distortion does not depend on the context, so the only thing to learn is the rate of the
non-anchors, and ``y = g_a(x)`` can be computed once per photo and kept. A step then costs
the context network and the small hyper-networks on latent crops: a fraction of a full
step, which runs the 5x5 transforms at 16x the resolution in both directions.

Overfitting is the danger with 625 photos, so every photo's whole latent is used (with its
mirror image and a 2x-downscaled copy, all computed by ``cache_latents``), a fixed 1/16 of
the photos (chosen by a hash of the file name) is held out, and the weights kept are those
with the fewest bits on the held-out photos, measured with real rounding, not the training
loss.
"""

from __future__ import annotations

import math
import random
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .context import CheckerboardContext, GroupedCheckerboardContext, anchor_mask
from .model import Y_STRIDE, VariableRateHyperprior

#: The held-out rate levels of the report: quality 10, 50 and 90 (level = quality / 100 * 9).
EVAL_QUALITIES = (10.0, 50.0, 90.0)
SCALE_BOUND = 0.11
LIKELIHOOD_BOUND = 1e-9


def held_out(name: str) -> bool:
    """A fixed 1/16 of the photos, by file name: the same split on every machine and run."""
    return zlib.crc32(name.encode()) % 16 == 0


def cache_latents(model: VariableRateHyperprior, files: list[Path], min_side: int = 128
                  ) -> dict[str, list]:
    """{"names": [(file name, variant)], "y": [latent]} for every photo: variant 0 as is,
    1 mirrored, 2 and 3 the same downscaled 2x (which washes out most photos' JPEG
    blocking). y covers only latents whose 16 x 16 block lies inside the photo (no padding
    statistics), in float16."""
    names, ys = [], []
    with torch.inference_mode():
        for f in files:
            with Image.open(f) as im:
                im = im.convert("RGB")
            w, h = im.size
            variants = [im, im.transpose(Image.FLIP_LEFT_RIGHT)]
            if min(w, h) // 2 >= min_side:
                half = im.resize((w // 2, h // 2), Image.BICUBIC, reducing_gap=None)
                variants += [half, half.transpose(Image.FLIP_LEFT_RIGHT)]
            for k, v in enumerate(variants):
                x = torch.from_numpy(np.asarray(v, dtype=np.uint8).copy()).permute(2, 0, 1)
                x = x[None].float() / 255
                H, W = x.shape[-2:]
                ph, pw = -(-H // 64) * 64, -(-W // 64) * 64
                x = torch.nn.functional.pad(x, (0, pw - W, 0, ph - H), mode="replicate")
                y, _ = model.analyze(x)
                names.append((f.name, k))
                ys.append(y[0, :, :H // Y_STRIDE, :W // Y_STRIDE].half().clone())
    return {"names": names, "y": ys}


def gaussian_bits(v: Tensor, sigma: Tensor) -> Tensor:
    """-log2 P(v) for v (= symbol + noise - mean) under a Gaussian convolved with a unit
    box, as CompressAI's GaussianConditional computes its likelihood."""
    v = v.abs()
    s = sigma * math.sqrt(2.0)
    lik = 0.5 * (torch.erfc((v - 0.5) / s) - torch.erfc((v + 0.5) / s))
    return -torch.log2(lik.clamp_min(LIKELIHOOD_BOUND))



@dataclass
class Prior:
    """The frozen hyperprior's view of a latent at one rate: gains and the anchors' params."""

    y_g: Tensor
    means_h: Tensor
    scales_h: Tensor
    gy: Tensor
    step: Tensor
    z_bits: Tensor


def prior(model: VariableRateHyperprior, y: Tensor, level: Tensor) -> Prior:
    gy, gy_inv, gz, gz_inv = model.gains(level)
    z_hat, z_lik = model.entropy_bottleneck(model.h_a(y) * gz)
    scales_h, means_h = model.h_s(z_hat * gz_inv).chunk(2, 1)
    z_bits = -torch.log2(z_lik).flatten(1).sum(1)
    return Prior(y * gy, means_h, scales_h, gy, gy_inv, z_bits)


def context_bits(ctx: CheckerboardContext, p: Prior, noise: bool) -> tuple[Tensor, Tensor]:
    """Bits per image of the anchors and of the non-anchors (with the context)."""
    from ._compressai import LowerBound

    bound = LowerBound(SCALE_BOUND)
    mask = anchor_mask(*p.y_g.shape[-2:], device=p.y_g.device)
    mu_h = p.means_h * p.gy
    sym_a = torch.round(p.y_g - mu_h)
    anchors = ((sym_a + mu_h) * p.step * mask).detach()
    scales, means = ctx(anchors, p.scales_h, p.means_h, p.step)
    mu = means * p.gy
    v = p.y_g - mu
    v = v + torch.empty_like(v).uniform_(-0.5, 0.5) if noise else torch.round(v)
    bits_n = (gaussian_bits(v, bound(scales * p.gy)) * (1 - mask)).flatten(1).sum(1)
    bits_a = (gaussian_bits(sym_a, bound(p.scales_h * p.gy)) * mask).flatten(1).sum(1)
    return bits_a, bits_n


def grouped_bits(ctx: GroupedCheckerboardContext, p: Prior, noise: bool,
                 per_group: bool = False) -> Tensor:
    """Bits per image of the whole y, coded group by group, anchors then non-anchors, each
    pass seeing what the decoder will have decoded before it (``per_group``: [groups, B])."""
    from ._compressai import LowerBound

    bound = LowerBound(SCALE_BOUND)
    mask = anchor_mask(*p.y_g.shape[-2:], device=p.y_g.device)
    bits, decoded, groups = 0, [], []

    def cost(r: Tensor, sigma: Tensor, where: Tensor) -> Tensor:
        v = r + torch.empty_like(r).uniform_(-0.5, 0.5) if noise else torch.round(r)
        return (gaussian_bits(v, bound(sigma)) * where).flatten(1).sum(1)

    for k in range(len(ctx.groups)):
        y, gy, step, sh, mh = (ctx.slice(k, t) for t in (p.y_g, p.gy, p.step, p.scales_h,
                                                            p.means_h))
        prev = torch.cat(decoded, 1) if k else None
        sa, ma = ctx.anchor_params(k, prev, sh, mh, step)
        mu_a = ma * gy
        bits = bits + cost(y - mu_a, sa * gy, mask)
        anchors = ((torch.round(y - mu_a) + mu_a) * step * mask).detach()
        sn, mn = ctx.nonanchor_params(k, prev, anchors, sh, mh, step)
        mu_n = mn * gy
        bits = bits + cost(y - mu_n, sn * gy, 1 - mask)
        mu = torch.where(mask.bool(), mu_a, mu_n)
        decoded.append(((torch.round(y - mu) + mu) * step).detach())
        groups.append(bits - sum(groups))
    return torch.stack(groups) if per_group else bits


def y_bits(ctx, p: Prior, noise: bool) -> Tensor:
    """Bits per image of y under either context."""
    if isinstance(ctx, GroupedCheckerboardContext):
        return grouped_bits(ctx, p, noise)
    a, n = context_bits(ctx, p, noise)
    return a + n


def baseline_bits(p: Prior) -> Tensor:
    """Bits per image of the whole y with the hyperprior alone (vaecodec 1), rounded."""
    mu_h = p.means_h * p.gy
    return gaussian_bits(torch.round(p.y_g - mu_h),
                         (p.scales_h * p.gy).clamp_min(SCALE_BOUND)).flatten(1).sum(1)


def evaluate(model: VariableRateHyperprior, ctx: CheckerboardContext,
             latents: list[Tensor], qualities=EVAL_QUALITIES) -> dict[float, float]:
    """Per quality: the relative change of the total bits (y and z) from the context, summed
    over the given whole latents with real rounding (negative = smaller files)."""
    out = {}
    with torch.no_grad():
        for q in qualities:
            level = torch.tensor([q / 100 * (model.levels - 1)])
            base = new = 0.0
            for y in latents:
                p = prior(model, y[None].float(), level)
                z = float(p.z_bits.sum())
                base += float(baseline_bits(p).sum()) + z
                new += float(y_bits(ctx, p, noise=False).sum()) + z
            out[q] = new / base - 1
    return out


@dataclass
class ContextTrainConfig:
    data: str                      # the training photos
    weights: str                   # the hyperprior whose transforms stay frozen
    out: str                       # the fitted context (a torch file; see ``assemble``)
    cache: str | None = None       # latents of ``data`` under ``weights``: read, or made and kept
    minutes: float = 60.0
    batch: int = 16
    crop: int = 12                 # latents (192 pixels); a multiple of 4
    lr: float = 2e-4
    lr_min: float = 1e-5
    warmup: int = 200
    eval_every: int = 500
    ctx: int = 128
    hidden: int = 256
    kernel: int = 5
    groups: tuple[int, ...] | None = None  # channel groups (e.g. ELIC_GROUPS); None: one
    chan: int = 64                 # grouped: width of the conv over earlier groups
    spat: int = 64                 # grouped: width of the conv over the group's anchors
    init: str | None = None        # a previous fit's output (same sizes) to continue from
    seed: int = 0
    threads: int = 0
    log: str | None = None


def context_sizes(cfg: ContextTrainConfig) -> dict:
    """The constructor arguments of the context ``cfg`` describes (kept with the fit)."""
    if cfg.groups:
        return {"groups": tuple(cfg.groups), "chan": cfg.chan, "spat": cfg.spat,
                "hidden": cfg.hidden, "kernel": cfg.kernel}
    return {"ctx": cfg.ctx, "hidden": cfg.hidden, "kernel": cfg.kernel}


def make_context(cfg: ContextTrainConfig, M: int):
    sizes = context_sizes(cfg)
    if cfg.groups:
        return GroupedCheckerboardContext(M, **sizes)
    return CheckerboardContext(M, **sizes)


def train_context(cfg: ContextTrainConfig) -> dict:
    from .weights import load

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = load(cfg.weights, fast=False).model
    if cfg.cache and Path(cfg.cache).is_file():
        cache = torch.load(cfg.cache, weights_only=True)
    else:
        from .train import IMAGE_SUFFIXES

        files = sorted(p for p in Path(cfg.data).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no images found in {cfg.data}")
        cache = cache_latents(model, files)
        if cfg.cache:
            torch.save(cache, cfg.cache)
    train = [y for (n, k), y in zip(cache["names"], cache["y"]) if not held_out(n)
             and min(y.shape[-2:]) >= cfg.crop]
    # whole held-out latents, cut to a multiple of 4 (the hyper-latent's stride)
    val = [y[:, :y.shape[1] // 4 * 4, :y.shape[2] // 4 * 4]
           for (n, k), y in zip(cache["names"], cache["y"]) if held_out(n) and k == 0]
    ctx = make_context(cfg, model.M)
    if cfg.init:
        ctx.load_state_dict(torch.load(cfg.init, weights_only=True)["state"])
    opt = torch.optim.Adam(ctx.parameters(), lr=cfg.lr)
    log = open(cfg.log, "a") if cfg.log else None

    def say(msg: str) -> None:
        print(msg, flush=True)
        if log:
            log.write(msg + "\n")
            log.flush()

    say(f"train {len(train)} latents, held out {len(val)}; ctx {sum(p.numel() for p in ctx.parameters())} params")
    best, best_score = None, 0.0
    t0, step = time.time(), 0
    limit = cfg.minutes * 60
    while True:
        elapsed = time.time() - t0
        if step % cfg.eval_every == 0 or elapsed > limit:
            ev = evaluate(model, ctx, val)
            score = sum(ev.values()) / len(ev)
            if score < best_score:
                best_score, best = score, {k: v.clone() for k, v in ctx.state_dict().items()}
            say(f"step {step} {elapsed / 60:.1f} min held-out " +
                " ".join(f"q{q:g} {100 * v:+.2f}%" for q, v in ev.items()) +
                f" best {100 * best_score:+.2f}%")
            if elapsed > limit:
                break
        progress = elapsed / limit
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        if progress > 0.7:
            t = (progress - 0.7) / 0.3
            lr = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(t, 1)))
        for g in opt.param_groups:
            g["lr"] = lr
        ys = []
        for _ in range(cfg.batch):
            y = train[rng.randrange(len(train))]
            i = rng.randint(0, y.shape[1] - cfg.crop)
            j = rng.randint(0, y.shape[2] - cfg.crop)
            ys.append(y[:, i:i + cfg.crop, j:j + cfg.crop])
        y = torch.stack(ys).float()
        level = torch.rand(cfg.batch) * (model.levels - 1)
        with torch.no_grad():
            p = prior(model, y, level)
        loss = y_bits(ctx, p, noise=True).mean() / (cfg.crop * Y_STRIDE) ** 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ctx.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            say(f"step {step} loss(bpp y) {loss.item():.4f} lr {lr:.2e}")
    result = {"steps": step, "minutes": (time.time() - t0) / 60, "held_out": best_score,
              "state": best or ctx.state_dict(),
              "config": context_sizes(cfg)}
    torch.save(result, cfg.out)
    return result


def assemble(weights: str, context_state: dict | None = None, sizes: dict | None = None):
    """A checkerboard model (with channel groups when ``sizes`` names them) from hyperprior
    weights and (optionally) a fitted context;
    without one, the context is the zero-initialised one that codes like vaecodec 1."""
    from .model import CheckerboardHyperprior, GroupedCheckerboardHyperprior
    from .weights import _CDF_BUFFERS, _architecture, load_state, read_metadata

    meta = read_metadata(weights)
    N, M, lambdas = _architecture(weights, meta)
    cls = GroupedCheckerboardHyperprior if (sizes or {}).get("groups") else CheckerboardHyperprior
    model = cls(N=N, M=M, lambdas=lambdas, **(sizes or {}))
    # the CDF tables are rebuilt by export; everything else must match by name
    state = {k: v for k, v in load_state(weights).items()
             if k.rsplit(".", 1)[-1] not in _CDF_BUFFERS}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(k.rsplit(".", 1)[-1] not in _CDF_BUFFERS
                         and not k.startswith("context.") for k in missing):
        raise ValueError(f"{weights} does not fit: missing {missing}, unexpected {unexpected}")
    if context_state is not None:
        model.context.load_state_dict(context_state)
    return model

"""Training: random crops held in RAM, one loop, checkpoints that resume, export to ``models/``.

We train on 2 CPU cores, so the loop is built to waste none of them: every photo is decoded
once into RAM (PNG decoding would otherwise compete with the network for the cores), the
transforms may run under bfloat16 autocast while the entropy models and the loss stay in
float32, and the schedule is tied to a time budget so a run of any length ends with its
learning-rate decay (the decay is worth about 1 dB).

Rate levels are sampled per crop, uniformly over the continuous level range, so every rate
between the trained lambdas is trained, not only the grid points.

More than one GPU or machine: ``torchrun --nproc_per_node=N -m vaecodec.train DATA --out CKPT
--device cuda ...`` runs PyTorch's DistributedDataParallel (nccl on GPUs, gloo on CPUs), one
process per device. Each process draws its own crops and levels and the gradients are
averaged, so the effective batch is ``batch_size x N``; rank 0 keeps the clock, the
checkpoints and the log, and its checkpoints are the single-process format (they resume with
any number of processes).
"""

from __future__ import annotations

import bisect
import csv
import ctypes
import itertools
import math
import os
import sys
import random
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

import torch.distributed as dist

from . import metrics
from .fastpath import bf16_is_fast
from .model import CheckerboardHyperprior, GroupedCheckerboardHyperprior, VariableRateHyperprior
from .weights import MAX_GROUPS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass
class TrainConfig:
    data: str                      # a folder of photos, or several joined by os.pathsep
    out: str
    steps: int = 0                 # 0: no step limit (use minutes)
    minutes: float = 0.0           # 0: no time limit (use steps)
    batch_size: int = 8
    crop: int = 128
    lr: float = 1e-4
    lr_min: float = 1e-5
    warmup: int = 200
    decay_frac: float = 0.15       # last fraction of the run decays lr -> lr_min (cosine)
    clip: float = 1.0
    ema: float = 0.999
    bf16: bool = True
    downscale_p: float = 0.3       # probability of a crop from the 2x-downscaled copy
    checkpoint_minutes: float = 5.0
    snapshot_minutes: float = 0.0  # >0: also keep the EMA weights every N minutes (learning curve)
    gain_lr_mult: float = 3.0      # the rate gains move slowly at the transforms' lr
    transform_lr_mult: float = 1.0 # g_a, g_s, h_a, h_s against the context and entropy models
    rate: str = "noise"            # y's rate term: "noise", "ste" or "mixed" (model.py)
    cost_power: float = 0.0        # each crop's cost / scale^p (rd_loss): 1 weighs rates alike
    cost_scale: str = "crop"       # the scale: the crop's own cost, or its level's ("level")
    hold_out: bool = True          # leave out the held-out photos (``held_out``) to judge on
    log_every: int = 50            # steps between host syncs (log, progress bar)
    channels_last: bool = True     # the transforms' activations in NHWC (faster convs)
    end_weight: float = 0.5        # extra probability mass (in levels) on each end level
    seed: int = 0
    threads: int = 0               # 0: all cores
    device: str = "cpu"            # "cuda": under torchrun, each process takes GPU LOCAL_RANK
    init_from: str | None = None
    init_lambda: float = 0.013     # lambda of a single-rate init, for the starting gains
    log: str | None = None
    extra: dict = field(default_factory=dict)


def held_out(name: str) -> bool:
    """A fixed 1/16 of the photos, by file name: the same split on every machine and run.
    Training leaves them out (``TrainConfig.hold_out``), so that a run can be judged by real
    files of photos it never saw."""
    return zlib.crc32(name.encode()) % 16 == 0


def photo_files(roots: str | os.PathLike, hold_out: bool = False) -> list[Path]:
    """The photos under one folder or several (joined by ``os.pathsep``), sorted, optionally
    without the held-out ones."""
    files = []
    for root in str(roots).split(os.pathsep):
        files += sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images found in {roots}")
    return [f for f in files if not (hold_out and held_out(f.name))]


class CropPool:
    """All training photos, decoded once and kept as uint8 where the model runs (on a GPU the
    crops are cut there: no host copy per step), plus 2x-downscaled copies that wash out the
    residual JPEG blocking most of these photos carry.

    A crop's photo is drawn with probability proportional to its area, so every pixel is
    equally likely: a large photo (the high-resolution set) is not worth as much as a
    thumbnail. The draws come from a Python ``Random`` (no device sync)."""

    def __init__(self, roots: str | os.PathLike, crop: int, downscale_p: float,
                 hold_out: bool = False, device: torch.device | str = "cpu"):
        self.crop, self.downscale_p = crop, downscale_p
        self.full: list[torch.Tensor] = []
        self.half: list[torch.Tensor] = []
        for f in photo_files(roots, hold_out):
            with Image.open(f) as im:
                im = im.convert("RGB")
                if min(im.size) >= crop:
                    self.full.append(_to_tensor(im).to(device))
                w, h = im.size
                if min(w, h) // 2 >= crop:
                    self.half.append(_to_tensor(im.resize((w // 2, h // 2), Image.BICUBIC,
                                                          reducing_gap=None)).to(device))
        if not self.full:
            raise ValueError(f"no image in {roots} is at least {crop}x{crop}")
        self._cum = {id(p): list(itertools.accumulate(t.shape[1] * t.shape[2] for t in p))
                     for p in (self.full, self.half)}

    def __len__(self) -> int:
        return len(self.full)

    @property
    def pixels(self) -> int:
        return self._cum[id(self.full)][-1]

    def batch(self, n: int, rng: random.Random) -> torch.Tensor:
        crops = []
        for _ in range(n):
            pool = self.half if self.half and rng.random() < self.downscale_p else self.full
            cum = self._cum[id(pool)]
            img = pool[bisect.bisect_right(cum, rng.random() * cum[-1])]
            _, h, w = img.shape
            y, x = rng.randint(0, h - self.crop), rng.randint(0, w - self.crop)
            c = img[:, y:y + self.crop, x:x + self.crop]
            crops.append(c.flip(-1) if rng.random() < 0.5 else c)
        return torch.stack(crops).float().div_(255)


def _to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def rd_loss(model: torch.nn.Module, x: torch.Tensor, level: torch.Tensor,
            bf16: bool, rate: str = "noise", cost_power: float = 0.0,
            scale: "LevelCostScale | None" = None) -> dict[str, torch.Tensor]:
    """lambda * 255^2 * MSE + bpp, each crop at its own lambda. ``model`` may be the
    DistributedDataParallel wrapper: the forward must go through it (that is what averages
    the gradients), the lambdas come from the model inside.

    The cost at the top level is 15x the bottom's, so in a plain mean the high rates set the
    gradient. ``cost_power`` p divides each crop's cost by a detached scale to the power p:
    0 the plain mean, 1 every relative gain worth the same, between them a balance. The
    scale is the crop's own cost, or with ``scale`` (a ``LevelCostScale``) the running mean
    cost of the crop's level: that weighs the levels alike but keeps, within a level, the
    plain mean, where a textured crop counts for more than a flat one, as its bits do in a
    file. "loss" stays the plain mean (what the log shows); "objective" is what is
    minimised."""
    out = model(x, level, autocast=bf16, rate=rate)
    n_px = x.size(2) * x.size(3)
    bits = sum(torch.log(lk).flatten(1).sum(1) for lk in out["likelihoods"].values())
    bpp = bits / (-math.log(2) * n_px)
    mse = (out["x_hat"] - x).pow(2).flatten(1).mean(1)
    lam = getattr(model, "module", model).lambda_at(level)
    cost = metrics.rd_cost(lam, metrics.PEAK ** 2 * mse, bpp)
    ref = cost.detach() if scale is None else scale(level, cost.detach())
    objective = (cost / ref.clamp_min(1e-6) ** cost_power).mean()  # p = 0: the plain cost
    psnr = -10 * torch.log10(mse.detach().clamp_min(1e-10))
    return {"loss": cost.detach().mean(), "objective": objective, "bpp": bpp.detach().mean(),
            "mse": mse.detach().mean(), "psnr": psnr.mean()}


class LevelCostScale:
    """The mean cost at each level: at every integer level a running, distance-weighted
    linear fit of log cost against the crops' levels nearby (a crop between two levels
    counts towards both), whose value at the level itself is the estimate; a plain average
    there would be pulled towards the middle of the range. Read back by interpolating in log
    space. Tensors only, so no host sync per step. Until a level has seen a few crops it
    answers with the crop's own cost."""

    def __init__(self, levels: int, decay: float = 0.99,
                 device: torch.device | str = "cpu") -> None:
        self.decay = decay
        self.sums = torch.zeros(5, levels, device=device)   # w, w*d, w*d^2, w*y, w*d*y

    def estimate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """log cost at each level, and whether there is enough to go on."""
        w, wd, wdd, wy, wdy = self.sums
        var = wdd - wd * wd / w.clamp_min(1e-9)
        slope = torch.where(var > 1e-3 * w, (wdy - wd * wy / w.clamp_min(1e-9))
                            / var.clamp_min(1e-9), torch.zeros_like(w))
        return (wy - slope * wd) / w.clamp_min(1e-9), w >= 2

    def __call__(self, level: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
        n = self.sums.size(1)
        lo = level.floor().long().clamp(0, n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        t = (level - lo).clamp(0, 1)
        log_cost, ok = self.estimate()
        ref = torch.where(ok[lo] & ok[hi],
                          torch.exp(torch.lerp(log_cost[lo], log_cost[hi], t)), cost)
        y = cost.clamp_min(1e-6).log()
        self.sums.mul_(self.decay)
        for idx, w, d in ((lo, 1 - t, t), (hi, t, t - 1)):
            self.sums.index_add_(1, idx, torch.stack([w, w * d, w * d * d, w * y, w * d * y]))
        return ref


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    start = 1 - cfg.decay_frac
    if progress <= start:
        return cfg.lr
    t = min(1.0, (progress - start) / max(cfg.decay_frac, 1e-9))
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * t))


def _progress(cfg: TrainConfig, step: int, elapsed: float) -> float:
    p = 0.0
    if cfg.steps:
        p = max(p, step / cfg.steps)
    if cfg.minutes:
        p = max(p, elapsed / (cfg.minutes * 60))
    return p


def load_init(model: VariableRateHyperprior, path: str, init_lambda: float) -> str:
    """Start from shipped weights (.safetensors, all levels) or a single-rate CompressAI
    MeanScaleHyperprior state_dict (.pt, gains then start at sqrt(lambda/init_lambda))."""
    if path.endswith(".safetensors"):
        from .weights import load_state

        state = load_state(path)
        _load_float_params(model, state)
        return "variable-rate weights" + _regrid_if_needed(model, state)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "model" in state and isinstance(state["model"], dict):
        state = state.get("ema") or state["model"]
        _load_float_params(model, state)
        return "checkpoint" + _regrid_if_needed(model, state)
    _load_float_params(model, state)
    model.init_gains(init_lambda)
    return f"single-rate state_dict, gains initialised for lambda {init_lambda}"


def _regrid_if_needed(model: VariableRateHyperprior, state: dict) -> str:
    old = state.get("lambdas")
    if old is None or (old.shape == model.lambdas.shape
                       and torch.allclose(old.float(), model.lambdas, rtol=1e-5)):
        return ""
    model.regrid(old.float(), {k: state[k].float() for k in
                               ("y_log_gain", "y_log_gain_inv", "z_log_gain", "z_log_gain_inv")})
    return (f", gains moved from {len(old)} levels {float(old[0]):.4g}..{float(old[-1]):.4g}"
            f" to {model.levels} levels {float(model.lambdas[0]):.4g}.."
            f"{float(model.lambdas[-1]):.4g}")


def _load_float_params(model: torch.nn.Module, state: dict) -> None:
    """Copy every parameter and same-shaped buffer; CDF tables are rebuilt at export. The
    lambda grid is the model's own (see ``_regrid_if_needed``)."""
    own = model.state_dict()
    missing = []
    for k, v in own.items():
        if k == "lambdas":
            continue
        if k in state and state[k].shape == v.shape:
            v.copy_(state[k].to(v.dtype))
        elif k in state and state[k].numel() == 0:
            continue
        elif not any(s in k for s in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")):
            missing.append(k)
    needed = [k for k in missing if "log_gain" not in k and k != "lambdas"]
    if needed:
        raise ValueError(f"initial weights lack {len(needed)} tensors, e.g. {needed[:3]}")


def _keep_freed_memory() -> None:
    """Each step frees and reallocates the same few hundred MB of activations. By default
    glibc returns blocks over 32 MB to the kernel (mmap) and trims the heap, so every step
    faults all those pages in again: on a 2-core AVX2 EPYC VM that was 125k page faults a
    second, most of the time spent in the kernel and ~2.9 s per step of 8 x 192^2 (float32)
    instead of ~2.2 s with the heap kept (0 faults). A large mmap threshold and no trimming
    keep freed memory in the heap for the process's lifetime; training is what it is for."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): its allocator, its behaviour
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_mmap_threshold, 2**31 - 1)
    libc.mallopt(m_trim_threshold, 2**31 - 1)
    libc.mallopt(m_top_pad, 2**28)


def train(cfg: TrainConfig, resume: str | None = None, progress_bar: bool = True) -> Path:
    """Flush-to-zero makes GDN's tiny values cheap on CPU; it is process-wide state, so it
    is switched off again afterwards (it breaks IEEE semantics for the caller's code).

    Under torchrun (``WORLD_SIZE`` > 1) this joins the process group for the run and always
    leaves it, also on error, so a failed run does not leave the caller's process bound to
    it; ``cfg.batch_size`` is then per process."""
    torch.set_flush_denormal(True)
    _keep_freed_memory()
    ctx = None
    try:
        ctx = _Dist.start(cfg.device)
        return _train(cfg, resume, progress_bar, ctx)
    finally:
        if ctx is not None:
            ctx.stop()
        torch.set_flush_denormal(False)


@dataclass
class _Dist:
    """Where this process runs and which share of the work is its own; the single-process
    run is ``rank 0 of 1`` and then never calls a collective."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @classmethod
    def start(cls, device: str) -> "_Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"--device {device}: not a device (cpu, cuda, cuda:1...)") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"--device {device}: CUDA is not available")
            if world > 1 and dev.index is not None:
                raise ValueError("with several processes, give --device cuda: each takes "
                                 "the GPU of its LOCAL_RANK")
            if dev.index is None:
                dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        if world <= 1:
            return cls(dev)
        if dev.type == "cuda":
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
        return cls(dev, dist.get_rank(), dist.get_world_size())

    def stop(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def from_rank0(self, value: float) -> float:
        """Rank 0's value everywhere: decisions taken from a local clock (stop, learning
        rate) would differ between processes, and one that left the loop would leave the
        others waiting in the next all-reduce forever."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return float(t)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
            t /= self.world
        return t


class WorkingClock:
    """Seconds of training, not of wall clock: a gap of more than ``MAX_GAP`` between two
    readings (the process was stopped with SIGSTOP to free the cores for a benchmark, or the
    machine slept) counts as ``MAX_GAP``, so a run's minutes and its learning-rate schedule
    pick up where they were. A step takes seconds, even on a busy machine."""

    MAX_GAP = 60.0

    def __init__(self, start: float = 0.0):
        self.elapsed, self.last = start, time.time()

    def __call__(self) -> float:
        now = time.time()
        self.elapsed += min(max(0.0, now - self.last), self.MAX_GAP)
        self.last = now
        return self.elapsed


def _train(cfg: TrainConfig, resume: str | None, progress_bar: bool, ctx: _Dist) -> Path:
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    lead = ctx.rank == 0
    say = print if lead else (lambda *a, **k: None)
    # Every process builds the same model from the same seed; below, each draws its own data.
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    dev = ctx.device

    state0 = torch.load(resume, map_location="cpu", weights_only=True)["model"] if resume \
        else None
    model, ema = model_like(cfg.init_from, state0), model_like(cfg.init_from, state0)
    del state0
    if cfg.channels_last:   # before anything is loaded or made from the parameters
        for m in (model.g_a, model.g_s, ema.g_a, ema.g_s):
            m.to(memory_format=torch.channels_last)
    groups, aux_params = param_groups(model, cfg)
    # Fused Adam: one kernel for all tensors, and it skips a step whose gradients were not
    # finite (``found_inf``) on the device, without a host sync to find out.
    opt = torch.optim.Adam(groups, lr=cfg.lr, fused=True)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3)
    main_params = [p for g in groups for p in g["params"]]
    step, elapsed = 0, 0.0
    out = Path(cfg.out)
    if resume:
        ck = torch.load(resume, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        step, elapsed = ck["step"], ck["elapsed"]
        prior = Prior.of_checkpoint(ck)
        rng.seed(_data_seed(cfg.seed, ctx.rank) + step)
        say(f"resumed {resume} at step {step} ({elapsed / 3600:.2f} h)")
    else:
        ck = None
        prior = prior_training(cfg.init_from)
        if cfg.init_from:
            say("init:", load_init(model, cfg.init_from, cfg.init_lambda))
        ema.load_state_dict(model.state_dict())
    model.to(dev)
    ema.to(dev)
    if ck is not None:  # after .to(): Adam moves its state to where the parameters are
        _load_opt(opt, ck["opt"], model)
        aux_opt.load_state_dict(ck["aux_opt"])
        del ck
    for p in ema.parameters():
        p.requires_grad_(False)
    net: torch.nn.Module = model
    if ctx.world > 1:
        if not resume:
            rng.seed(_data_seed(cfg.seed, ctx.rank))
        torch.manual_seed(_data_seed(cfg.seed, ctx.rank) + step)
        # The quantiles get no gradient from the RD loss (the aux optimizer trains them), so
        # DDP must be told some parameters go unused.
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=True)

    if cfg.bf16 and not bf16_is_fast(dev):
        say(f"bf16 off: {dev} has no fast bfloat16 (it would be emulated, many times slower)")
        cfg = replace(cfg, bf16=False)
    pool = CropPool(cfg.data, cfg.crop, cfg.downscale_p, cfg.hold_out, dev)
    procs = f" x {ctx.world} processes ({cfg.batch_size * ctx.world} per step)" \
        if ctx.world > 1 else ""
    say(f"{len(pool)} images ({pool.pixels / 1e6:.0f} MP) on {dev}"
        f"{', held-out photos left out' if cfg.hold_out else ''}; batch {cfg.batch_size}"
        f"{procs} x {cfg.crop}^2; rate {cfg.rate}; threads {torch.get_num_threads()}; "
        f"bf16 {cfg.bf16}")
    ema_params, model_params = list(ema.parameters()), list(model.parameters())
    level_scale = LevelCostScale(model.levels, device=dev) if cfg.cost_scale == "level" \
        else None

    log_f = open(cfg.log, "a", newline="") if cfg.log and lead else None
    log_w = csv.writer(log_f) if log_f else None
    last_ck = last_snap = time.time()
    clock = WorkingClock(elapsed)
    bar = tqdm(disable=not (progress_bar and lead), initial=step, total=cfg.steps or None,
               dynamic_ncols=True, mininterval=10)
    avg: dict[str, float] = {}
    sums = torch.zeros(4, device=dev)     # loss, bpp, psnr, skipped: summed between syncs
    since = 0
    model.train()
    try:
        while True:
            elapsed = ctx.from_rank0(clock())
            prog = _progress(cfg, step, elapsed)
            if prog >= 1.0 and (cfg.steps or cfg.minutes):
                break
            lr = lr_at(cfg, step, prog)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_mult", 1.0)
            x = pool.batch(cfg.batch_size, rng)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            level = sample_levels(cfg.batch_size, model.levels, cfg.end_weight, dev)
            res = rd_loss(net, x, level, cfg.bf16, cfg.rate, cfg.cost_power, level_scale)
            opt.zero_grad(set_to_none=True)
            res["objective"].backward()
            # One all-reduce gives the log the mean over all crops and every process the same
            # skip decision (a NaN on one rank reaches all of them through the gradients).
            stats = ctx.mean(torch.stack([res[k].detach() for k in ("loss", "bpp", "psnr")]))
            norm = torch.nn.utils.clip_grad_norm_(main_params, cfg.clip)
            bad = (~torch.isfinite(norm) | ~torch.isfinite(stats[0])).float()
            opt.found_inf = bad
            opt.step()
            aux_opt.zero_grad(set_to_none=True)
            aux = model.aux_loss()
            aux.backward()
            for p in aux_params:  # outside DDP's forward, so averaged here
                ctx.mean(p.grad)
            aux_opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, model_params, 1 - cfg.ema)
                sums += torch.cat([torch.nan_to_num(stats) * (1 - bad), bad[None]])
            step += 1
            since += 1
            bar.update(1)
            if step % cfg.log_every and time.time() - last_ck <= cfg.checkpoint_minutes * 60:
                continue
            *total, skipped = sums.tolist()       # the one host sync of these steps
            if skipped:
                say(f"step {step}: {skipped:.0f} of the last {since} batches skipped "
                    "(non-finite loss or gradients)")
            if since > skipped:
                for k, v in zip(("loss", "bpp", "psnr"), total):
                    v /= since - skipped
                    avg[k] = v if k not in avg else 0.7 * avg[k] + 0.3 * v
            sums.zero_()
            since = 0
            if not lead:
                continue
            if avg:
                bar.set_postfix(loss=f"{avg['loss']:.3f}", bpp=f"{avg['bpp']:.3f}",
                                psnr=f"{avg['psnr']:.2f}", lr=f"{lr:.1e}")
                if log_w:
                    log_w.writerow([step, f"{elapsed:.1f}", f"{lr:.2e}", f"{avg['loss']:.4f}",
                                    f"{avg['bpp']:.4f}", f"{avg['psnr']:.3f}",
                                    f"{float(aux.detach()):.2f}"])
                    log_f.flush()
            if time.time() - last_ck > cfg.checkpoint_minutes * 60:
                save_checkpoint(out, model, ema, opt, aux_opt, step, clock(), cfg, prior)
                last_ck = time.time()
            if cfg.snapshot_minutes and time.time() - last_snap > cfg.snapshot_minutes * 60:
                save_snapshot(out, ema, step, clock(), prior)
                last_snap = time.time()
    finally:
        bar.close()
        if log_f:
            log_f.close()
    if lead:
        save_checkpoint(out, model, ema, opt, aux_opt, step, clock(), cfg, prior)
        print(f"done: {step} steps, {clock() / 3600:.2f} h -> {out}")
    if ctx.world > 1:
        # every process returns only once the checkpoint is on disk
        dist.barrier(device_ids=[dev.index] if dev.type == "cuda" else None)
    return out


def param_groups(model: torch.nn.Module, cfg: TrainConfig
                 ) -> tuple[list[dict], list[torch.nn.Parameter]]:
    """Adam's groups: the transforms (g_a, g_s, h_a, h_s) at ``transform_lr_mult`` of the
    learning rate, the rate gains at ``gain_lr_mult``, the rest (context, entropy models'
    own parameters) at 1; and the quantiles, which the aux optimizer trains."""
    transforms, gains, rest, aux = [], [], [], []
    for n, p in model.named_parameters():
        if n.endswith(".quantiles"):
            aux.append(p)
        elif "log_gain" in n:
            gains.append(p)
        elif n.split(".", 1)[0] in ("g_a", "g_s", "h_a", "h_s"):
            transforms.append(p)
        else:
            rest.append(p)
    groups = [{"params": transforms, "lr_mult": cfg.transform_lr_mult, "name": "transforms"},
              {"params": gains, "lr_mult": cfg.gain_lr_mult, "name": "gains"},
              {"params": rest, "lr_mult": 1.0, "name": "rest"}]
    return [g for g in groups if g["params"]], aux


def _load_opt(opt: torch.optim.Optimizer, state: dict, model: torch.nn.Module) -> None:
    """A checkpoint's optimizer state, into this run's groups. Checkpoints of the loop before
    the transforms had a group of their own hold two groups (every other parameter in the
    model's order, then the gains): their moments are mapped by name. The lr multipliers and
    the fused kernel are this run's."""
    saved = state["param_groups"]
    if len(saved) != len(opt.param_groups):
        names = [n for n, _ in model.named_parameters() if not n.endswith(".quantiles")]
        old = [n for n in names if "log_gain" not in n] + [n for n in names if "log_gain" in n]
        ids = [i for g in saved for i in g["params"]]
        if len(ids) != len(old):
            raise ValueError("the checkpoint's optimizer holds other parameters")
        by_name = dict(zip(old, ids))
        where = {id(p): n for n, p in model.named_parameters()}
        state = {"state": state["state"], "param_groups": [
            dict(saved[0], params=[by_name[where[id(p)]] for p in g["params"]])
            for g in opt.param_groups]}
    mults = [(g["lr_mult"], g.get("name")) for g in opt.param_groups]
    opt.load_state_dict(state)
    for g, (m, name) in zip(opt.param_groups, mults):
        g.update(lr_mult=m, name=name, fused=True, foreach=None)
        for p in g["params"]:   # the moments in the parameter's memory format
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    opt.state[p][k] = torch.empty_like(p).copy_(v)


def _copy_buffers(ema: torch.nn.Module, model: torch.nn.Module) -> None:
    with torch.no_grad():
        for be, bm in zip(ema.buffers(), model.buffers()):
            if be.shape == bm.shape:
                be.copy_(bm)


def _data_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps the single-process seeds; the others are far enough apart that no
    resume (seed + step) of one rank replays another rank's crops."""
    return seed + rank * 2 ** 32


#: The default model id of each latent codec's weights (the shipped files' stems).
MODEL_IDS = {"hyperprior": "vaecodec-hyperprior-vr", "checkerboard": "vaecodec-checkerboard-vr",
             "groups": "vaecodec-groups-vr"}


def model_like(init_from: str | None, state: dict | None = None) -> VariableRateHyperprior:
    """A fresh model of the architecture that a checkpoint's state (when resuming or
    exporting) or the initial weights file (``--init-from``) hold: the hyperprior of
    vaecodec 1, or one of vaecodec 2's context models with the sizes those tensors have.
    Joint training of the checkerboard starts from weights made by ``vaecodec
    fit-context``."""
    if state is None and init_from and init_from.endswith(".safetensors"):
        from .weights import load_state, read_metadata

        if read_metadata(init_from).get("architecture") in ("CheckerboardHyperprior",
                                                            "GroupedCheckerboardHyperprior"):
            state = load_state(init_from)
    elif state is None and init_from:
        ck = torch.load(init_from, map_location="cpu", weights_only=True)
        state = (ck.get("ema") or ck.get("model") or ck) if isinstance(ck, dict) else None
    if state is not None and "context.spat.0.weight" in state:
        spat = [state[f"context.spat.{k}.weight"] for k in range(MAX_GROUPS)
                if f"context.spat.{k}.weight" in state]
        chan = state.get("context.chan.1.weight")
        return GroupedCheckerboardHyperprior(
            groups=tuple(w.shape[1] for w in spat), chan=chan.shape[0] if chan is not None else 1,
            spat=spat[0].shape[0], hidden=state["context.ep_n.0.0.weight"].shape[0],
            kernel=spat[0].shape[-1])
    if state is None or "context.ctx.weight" not in state:
        return VariableRateHyperprior()
    w = state["context.ctx.weight"]
    return CheckerboardHyperprior(ctx=w.shape[0], hidden=state["context.ep.0.weight"].shape[0],
                                  kernel=w.shape[-1])


def sample_levels(n: int, levels: int, end_weight: float,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform over the continuous level range, plus ``end_weight`` levels' worth of mass on
    each end: uniform sampling alone trains the end levels half as often as the inner ones
    (they have a neighbour on one side only), and the ends are where the rate range is won."""
    lo, hi = -end_weight, levels - 1 + end_weight
    return (torch.rand(n, device=device) * (hi - lo) + lo).clamp(0, levels - 1)


#: Metadata a weights file passes on to weights trained from it: the context's own fit, which
#: the run's ``steps`` and ``train_hours`` (the transforms' training) do not count.
LINEAGE_KEYS = ("context_steps", "context_hours", "transforms_from")


class Prior(NamedTuple):
    """Training the starting weights had before this run (steps, hours), and what else they
    record of their making (``lineage``: LINEAGE_KEYS, and ``init_from``, the hash of the
    weights file a run started from). A checkpoint's own ``step`` and ``elapsed`` stay this
    run's (the schedule runs on them); an export adds the two, so weights trained in segments
    (``--init-from``, ``--resume``) record the totals, and keeps the lineage."""

    steps: int = 0
    hours: float = 0.0
    lineage: dict = {}

    def saved(self) -> dict:
        return {"prior_steps": self.steps, "prior_hours": self.hours,
                "prior_lineage": dict(self.lineage)}

    @classmethod
    def of_checkpoint(cls, ck: dict, this_run: bool = False) -> "Prior":
        """The prior a checkpoint recorded; with ``this_run``, plus its own steps and time
        (a run that starts from it)."""
        steps, hours = int(ck.get("prior_steps", 0)), float(ck.get("prior_hours", 0.0))
        if this_run:
            steps, hours = steps + int(ck["step"]), hours + float(ck.get("elapsed", 0.0)) / 3600
        return cls(steps, hours, dict(ck.get("prior_lineage", {})))


def prior_training(init_from: str | None) -> Prior:
    """The totals recorded by the weights a run starts from: a weights file's metadata, or a
    checkpoint's counters (its own prior included); nothing for a single-rate state_dict."""
    if not init_from:
        return Prior()
    if init_from.endswith(".safetensors"):
        from .weights import file_hash, read_metadata

        meta = read_metadata(init_from)
        lineage = {k: meta[k] for k in LINEAGE_KEYS if k in meta}
        lineage["init_from"] = file_hash(init_from).hex()
        try:
            return Prior(int(meta.get("steps", 0)), float(meta.get("train_hours", 0.0)), lineage)
        except ValueError:
            return Prior(lineage=lineage)
    ck = torch.load(init_from, map_location="cpu", weights_only=True)
    if not (isinstance(ck, dict) and "step" in ck):
        return Prior()
    return Prior.of_checkpoint(ck, this_run=True)


def save_snapshot(out: Path, ema, step: int, elapsed: float, prior: Prior = Prior()) -> Path:
    """EMA weights only, named by step, for the learning curve (export_checkpoint reads them).
    The loop keeps the EMA's buffers equal to the model's (they do not train)."""
    path = out.with_name(f"{out.stem}-ema-{step:07d}.pt")
    tmp = path.with_suffix(".tmp")
    torch.save({"ema": _cpu(ema.state_dict()), "step": step, "elapsed": elapsed,
                **prior.saved()}, tmp)
    os.replace(tmp, path)
    return path


def save_checkpoint(out: Path, model, ema, opt, aux_opt, step: int, elapsed: float,
                    cfg: TrainConfig, prior: Prior = Prior()) -> None:
    """Written to a temp file and renamed, so an interrupted save never corrupts the last one.
    Tensors are saved from the CPU, so a checkpoint from a GPU run loads anywhere."""
    _copy_buffers(ema, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(_cpu({"model": model.state_dict(), "ema": ema.state_dict(),
                     "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(), "step": step,
                     "elapsed": elapsed, **prior.saved(),
                     "config": {k: v for k, v in asdict(cfg).items() if k != "extra"}}), tmp)
    os.replace(tmp, out)


def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()  # the tensor itself when it is already there: no copy on CPU runs
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def export_checkpoint(ckpt: str, out: str, model_id: str | None = None,
                      use_ema: bool = True) -> bytes:
    """Checkpoint -> shipped safetensors file (EMA weights by default). Returns its hash.
    Its ``steps`` and ``train_hours`` are the totals: the starting weights' and this run's;
    the starting weights' lineage (``Prior``) is kept."""
    from . import weights

    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    state = ck["ema"] if use_ema or "model" not in ck else ck["model"]
    model = model_like(None, state)
    model.load_state_dict(state)
    model.eval()
    model_id = model_id or MODEL_IDS[model.LATENT_CODEC]
    hours = float(ck.get("prior_hours", 0.0)) + ck.get("elapsed", 0) / 3600
    extra = {**{k: str(v) for k, v in ck.get("prior_lineage", {}).items()},
             "steps": str(int(ck.get("prior_steps", 0)) + ck.get("step", 0)),
             "train_hours": f"{hours:.2f}"}
    return weights.export(model, out, model_id, extra)

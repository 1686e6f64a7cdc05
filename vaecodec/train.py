"""Training: random crops held in RAM, one loop, checkpoints that resume, export to ``models/``.

We train on 2 CPU cores, so the loop is built to waste none of them: every photo is decoded
once into RAM (PNG decoding would otherwise compete with the network for the cores), the
transforms may run under bfloat16 autocast while the entropy models and the loss stay in
float32, and the schedule is tied to a time budget so a run of any length ends with its
learning-rate decay (the decay is worth about 1 dB).

Rate levels are sampled per crop, uniformly over the continuous level range, so every rate
between the trained lambdas is trained, not only the grid points.
"""

from __future__ import annotations

import csv
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .model import VariableRateHyperprior

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass
class TrainConfig:
    data: str
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
    seed: int = 0
    threads: int = 0               # 0: all cores
    init_from: str | None = None
    init_lambda: float = 0.013     # lambda of a single-rate init, for the starting gains
    log: str | None = None
    extra: dict = field(default_factory=dict)


class CropPool:
    """All training photos, decoded once, plus 2x-downscaled copies that wash out the
    residual JPEG blocking most of these photos carry."""

    def __init__(self, root: str | os.PathLike, crop: int, downscale_p: float):
        self.crop, self.downscale_p = crop, downscale_p
        files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no images found in {root}")
        self.full: list[torch.Tensor] = []
        self.half: list[torch.Tensor] = []
        for f in files:
            with Image.open(f) as im:
                im = im.convert("RGB")
                if min(im.size) >= crop:
                    self.full.append(_to_tensor(im))
                w, h = im.size
                if min(w, h) // 2 >= crop:
                    self.half.append(_to_tensor(im.resize((w // 2, h // 2), Image.BICUBIC,
                                                          reducing_gap=None)))
        if not self.full:
            raise ValueError(f"no image in {root} is at least {crop}x{crop}")

    def __len__(self) -> int:
        return len(self.full)

    def batch(self, n: int, rng: random.Random) -> torch.Tensor:
        out = torch.empty(n, 3, self.crop, self.crop, dtype=torch.uint8)
        for k in range(n):
            pool = self.half if self.half and rng.random() < self.downscale_p else self.full
            img = pool[rng.randrange(len(pool))]
            _, h, w = img.shape
            y, x = rng.randint(0, h - self.crop), rng.randint(0, w - self.crop)
            c = img[:, y:y + self.crop, x:x + self.crop]
            if rng.random() < 0.5:
                c = c.flip(-1)
            out[k] = c
        return out.float().div_(255)


def _to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def rd_loss(model: VariableRateHyperprior, x: torch.Tensor, level: torch.Tensor,
            bf16: bool) -> dict[str, torch.Tensor]:
    """lambda * 255^2 * MSE + bpp, each crop at its own lambda."""
    out = model(x, level, autocast=bf16)
    n_px = x.size(2) * x.size(3)
    bits = sum(torch.log(lk).flatten(1).sum(1) for lk in out["likelihoods"].values())
    bpp = bits / (-math.log(2) * n_px)
    mse = (out["x_hat"] - x).pow(2).flatten(1).mean(1)
    lam = model.lambda_at(level)
    loss = (lam * 255 ** 2 * mse + bpp).mean()
    psnr = -10 * torch.log10(mse.detach().clamp_min(1e-10))
    return {"loss": loss, "bpp": bpp.detach().mean(), "mse": mse.detach().mean(),
            "psnr": psnr.mean()}


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
        return "variable-rate weights"
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "model" in state and isinstance(state["model"], dict):
        state = state.get("ema") or state["model"]
        _load_float_params(model, state)
        return "checkpoint"
    _load_float_params(model, state)
    model.init_gains(init_lambda)
    return f"single-rate state_dict, gains initialised for lambda {init_lambda}"


def _load_float_params(model: torch.nn.Module, state: dict) -> None:
    """Copy every parameter and same-shaped buffer; CDF tables are rebuilt at export."""
    own = model.state_dict()
    missing = []
    for k, v in own.items():
        if k in state and state[k].shape == v.shape:
            v.copy_(state[k].to(v.dtype))
        elif k in state and state[k].numel() == 0:
            continue
        elif not any(s in k for s in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")):
            missing.append(k)
    needed = [k for k in missing if "log_gain" not in k and k != "lambdas"]
    if needed:
        raise ValueError(f"initial weights lack {len(needed)} tensors, e.g. {needed[:3]}")


def train(cfg: TrainConfig, resume: str | None = None, progress_bar: bool = True) -> Path:
    """Flush-to-zero makes GDN's tiny values cheap on CPU; it is process-wide state, so it
    is switched off again afterwards (it breaks IEEE semantics for the caller's code)."""
    torch.set_flush_denormal(True)
    try:
        return _train(cfg, resume, progress_bar)
    finally:
        torch.set_flush_denormal(False)


def _train(cfg: TrainConfig, resume: str | None, progress_bar: bool) -> Path:
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)

    model = VariableRateHyperprior()
    ema = VariableRateHyperprior()
    main_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    opt = torch.optim.Adam(main_params, lr=cfg.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3)
    step, elapsed = 0, 0.0
    out = Path(cfg.out)
    if resume:
        ck = torch.load(resume, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        aux_opt.load_state_dict(ck["aux_opt"])
        step, elapsed = ck["step"], ck["elapsed"]
        rng.seed(cfg.seed + step)
        print(f"resumed {resume} at step {step} ({elapsed / 3600:.2f} h)")
    else:
        if cfg.init_from:
            print("init:", load_init(model, cfg.init_from, cfg.init_lambda))
        ema.load_state_dict(model.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)

    pool = CropPool(cfg.data, cfg.crop, cfg.downscale_p)
    print(f"{len(pool)} images in RAM; batch {cfg.batch_size} x {cfg.crop}^2; "
          f"threads {torch.get_num_threads()}; bf16 {cfg.bf16}")

    log_f = open(cfg.log, "a", newline="") if cfg.log else None
    log_w = csv.writer(log_f) if log_f else None
    last_ck = time.time()
    t0 = time.time() - elapsed
    bar = tqdm(disable=not progress_bar, initial=step, total=cfg.steps or None,
               dynamic_ncols=True, mininterval=10)
    avg: dict[str, float] = {}
    model.train()
    while True:
        elapsed = time.time() - t0
        prog = _progress(cfg, step, elapsed)
        if prog >= 1.0 and (cfg.steps or cfg.minutes):
            break
        lr = lr_at(cfg, step, prog)
        for g in opt.param_groups:
            g["lr"] = lr
        x = pool.batch(cfg.batch_size, rng)
        level = torch.rand(cfg.batch_size) * (model.levels - 1)
        res = rd_loss(model, x, level, cfg.bf16)
        opt.zero_grad(set_to_none=True)
        res["loss"].backward()
        if not torch.isfinite(res["loss"]):
            print(f"step {step}: non-finite loss, batch skipped")
            continue
        torch.nn.utils.clip_grad_norm_(main_params, cfg.clip)
        opt.step()
        aux_opt.zero_grad(set_to_none=True)
        aux = model.aux_loss()
        aux.backward()
        aux_opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - cfg.ema)
            for (n, be), bm in zip(ema.named_buffers(), model.buffers()):
                if be.shape == bm.shape:
                    be.copy_(bm)
        step += 1
        for k in ("loss", "bpp", "psnr"):
            v = float(res[k].detach())
            avg[k] = 0.98 * avg.get(k, v) + 0.02 * v
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{avg['loss']:.3f}", bpp=f"{avg['bpp']:.3f}",
                            psnr=f"{avg['psnr']:.2f}", lr=f"{lr:.1e}")
            if log_w:
                log_w.writerow([step, f"{elapsed:.0f}", f"{lr:.2e}", f"{avg['loss']:.4f}",
                                f"{avg['bpp']:.4f}", f"{avg['psnr']:.3f}", f"{float(aux):.2f}"])
                log_f.flush()
        if time.time() - last_ck > cfg.checkpoint_minutes * 60:
            save_checkpoint(out, model, ema, opt, aux_opt, step, time.time() - t0, cfg)
            last_ck = time.time()
    bar.close()
    save_checkpoint(out, model, ema, opt, aux_opt, step, time.time() - t0, cfg)
    print(f"done: {step} steps, {(time.time() - t0) / 3600:.2f} h -> {out}")
    return out


def save_checkpoint(out: Path, model, ema, opt, aux_opt, step: int, elapsed: float,
                    cfg: TrainConfig) -> None:
    """Written to a temp file and renamed, so an interrupted save never corrupts the last one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                "aux_opt": aux_opt.state_dict(), "step": step, "elapsed": elapsed,
                "config": {k: v for k, v in asdict(cfg).items() if k != "extra"}}, tmp)
    os.replace(tmp, out)


def export_checkpoint(ckpt: str, out: str, model_id: str = "vaecodec-hyperprior-vr",
                      use_ema: bool = True) -> bytes:
    """Checkpoint -> shipped safetensors file (EMA weights by default). Returns its hash."""
    from . import weights

    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = VariableRateHyperprior()
    model.load_state_dict(ck["ema" if use_ema else "model"])
    model.eval()
    extra = {"steps": str(ck.get("step", 0)),
             "train_hours": f"{ck.get('elapsed', 0) / 3600:.2f}"}
    return weights.export(model, out, model_id, extra)

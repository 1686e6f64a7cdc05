"""The shipped weights: where they are, how they load, and their identity.

Weights are safetensors files, so loading one never executes code from it. The integer CDF
tables of the entropy models are computed once at export and stored in the file: rebuilding
them at load time on another machine could give other tables and desynchronise the range
coder. A file's identity is the first 8 bytes of its SHA-256; the container stores it so that
decoding with other weights fails clearly instead of producing garbage.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import WeightsError

if TYPE_CHECKING:
    import torch

    from .model import VariableRateHyperprior

DEFAULT_WEIGHTS = "vaecodec-groups-vr.safetensors"
ARCHITECTURE = "VariableRateHyperprior"
#: Architectures a weights file may name (its ``architecture`` metadata), each a model class
#: in model.py; the checkerboard's context sizes are read from the metadata too.
ARCHITECTURES = ("VariableRateHyperprior", "CheckerboardHyperprior",
                 "GroupedCheckerboardHyperprior")
CONTEXT_KEYS = ("ctx", "hidden", "kernel")
GROUPED_KEYS = ("chan", "spat", "hidden", "kernel")
MAX_GROUPS = 16
MAX_KERNEL = 7
_CDF_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
MAX_CHANNELS = 512      # bounds N and M read from a file before a model is built from them
MAX_LEVELS = 64


@dataclass
class LoadedModel:
    model: "VariableRateHyperprior"
    model_id: str
    model_hash: bytes
    path: Path


def models_dir() -> Path:
    """The installed ``vaecodec/models`` package data, or ``models/`` in a source checkout."""
    try:
        from importlib.resources import files

        p = Path(str(files("vaecodec.models")))
        if (p / DEFAULT_WEIGHTS).is_file():
            return p
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "models"


def default_weights_path() -> Path:
    return models_dir() / DEFAULT_WEIGHTS


def file_hash(path: str | os.PathLike) -> bytes:
    """First 8 bytes of the file's SHA-256, cached by (path, size, mtime): searching the
    installed weights for a container's hash must not re-read every file on every decode."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise WeightsError(f"weights file not found: {p}") from None
    return _hash_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _hash_cached(path: str, size: int, mtime_ns: int) -> bytes:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise WeightsError(f"cannot read weights file {path}: {e.strerror or e}") from None
    return h.digest()[:8]


def installed() -> list[Path]:
    """Every weights file a decoder may pick by hash: ``*.safetensors`` in ``models_dir()``,
    the default first (it is the likeliest match, and hashing stops at the first hit)."""
    d = models_dir()
    found = sorted(d.glob("*.safetensors")) if d.is_dir() else []
    default = default_weights_path()
    return sorted(found, key=lambda p: p != default)


def find_by_hash(model_hash: bytes, candidates: list[Path] | None = None) -> Path | None:
    """The candidate whose file hash is ``model_hash`` (default: the installed weights), or
    None. Unreadable candidates are skipped: one broken file must not hide a good one."""
    for path in installed() if candidates is None else candidates:
        try:
            if file_hash(path) == model_hash:
                return Path(path)
        except WeightsError:
            continue
    return None


def describe(path: Path) -> str:
    """``name (hash)`` for an error message; it must not fail on a file it describes."""
    try:
        return f"{path.name} ({file_hash(path).hex()})"
    except WeightsError:
        return f"{path.name} (unreadable)"


def load_state(path: str | os.PathLike) -> dict[str, "torch.Tensor"]:
    """Tensors of a weights file in float32 (stored half precision), CDF tables as int32."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"cannot read weights file {path}: not a safetensors file ({e})"
                           ) from None
    return {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several unrelated types on bad files
        why = " ".join(str(e).split()) or type(e).__name__
        raise WeightsError(f"cannot read weights file {path}: not a safetensors file ({why})"
                           ) from None


@lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, fast: bool = True) -> LoadedModel:
    from . import fastpath, model as models

    meta = read_metadata(path)
    arch = meta.get("architecture")
    if arch not in ARCHITECTURES:
        raise WeightsError(f"{path} holds no vaecodec weights "
                           f"(architecture: {arch or 'unknown'})")
    N, M, lambdas = _architecture(path, meta)
    state = load_state(path)
    _check_shapes(path, state, N, M, len(lambdas))
    model = getattr(models, arch)(N=N, M=M, lambdas=lambdas, **_context_sizes(path, meta, arch, M))
    _resize_cdf_buffers(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise WeightsError(f"{path} does not fit the {arch} architecture: {first}"
                           ) from None
    if model.gaussian_conditional._quantized_cdf.numel() == 0:
        raise WeightsError(f"{path} has no CDF tables: export it with `vaecodec export`")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if fast:
        fastpath.prepare(model)
    return LoadedModel(model, meta.get("model_id", Path(path).stem), file_hash(path), Path(path))


def load(path: str | os.PathLike | None = None, fast: bool = True) -> LoadedModel:
    """The model for ``path`` (default: the shipped weights), loaded once per process.
    ``fast=False`` keeps the transforms as trained (see fastpath.py), for speed comparisons."""
    p = Path(path) if path else default_weights_path()
    try:
        st = p.stat()
    except OSError:
        raise WeightsError(f"weights file not found: {p}") from None
    return _load_cached(str(p.resolve()), st.st_mtime_ns, fast)


def _architecture(path: str, meta: dict[str, str]) -> tuple[int, int, tuple[float, ...]]:
    """N, M and lambdas from the metadata, bounded before any module is built from them:
    N = 10^8 in a hostile file would otherwise allocate gigabytes of convolution weights."""
    try:
        N, M = int(meta["N"]), int(meta["M"])
        lambdas = json.loads(meta["lambdas"])
        if not isinstance(lambdas, list):
            raise ValueError("lambdas is not a list")
        lambdas = tuple(float(x) for x in lambdas)
    except (KeyError, ValueError, TypeError) as e:
        raise WeightsError(f"{path}: incomplete or invalid metadata ({e})") from None
    if not (1 <= N <= MAX_CHANNELS and 1 <= M <= MAX_CHANNELS):
        raise WeightsError(f"{path}: N={N}, M={M} outside 1..{MAX_CHANNELS}")
    if not (2 <= len(lambdas) <= MAX_LEVELS
            and all(math.isfinite(x) and x > 0 for x in lambdas)):
        raise WeightsError(f"{path}: lambdas must be 2..{MAX_LEVELS} positive numbers")
    return N, M, lambdas


def _context_sizes(path: str, meta: dict[str, str], arch: str, M: int = 0) -> dict:
    """The context's sizes, bounded like N and M (and the groups must add up to M)."""
    if arch == "VariableRateHyperprior":
        return {}
    keys = GROUPED_KEYS if arch == "GroupedCheckerboardHyperprior" else CONTEXT_KEYS
    try:
        sizes: dict = {k: int(meta[k]) for k in keys}
        if arch == "GroupedCheckerboardHyperprior":
            groups = json.loads(meta["groups"])
            if not isinstance(groups, list) or not all(isinstance(g, int) for g in groups):
                raise ValueError("groups is not a list of integers")
            sizes["groups"] = tuple(groups)
    except (KeyError, ValueError, TypeError) as e:
        raise WeightsError(f"{path}: incomplete or invalid metadata ({e})") from None
    widths = [v for k, v in sizes.items() if k not in ("kernel", "groups")]
    groups = sizes.get("groups", (M,))
    if not (all(1 <= v <= MAX_CHANNELS for v in widths)
            and sizes["kernel"] in range(1, MAX_KERNEL + 1, 2)
            and 1 <= len(groups) <= MAX_GROUPS and min(groups) >= 1 and sum(groups) == M):
        raise WeightsError(f"{path}: context sizes {sizes} out of range")
    return sizes


def _check_shapes(path: str, state: dict, N: int, M: int, levels: int) -> None:
    """The metadata must describe the tensors: a file whose N or M disagrees with its own
    tensors is refused before a model of that size is built. A name missing here is left
    to the strict ``load_state_dict`` below, which names it."""
    expected = {"y_log_gain": (levels, M), "z_log_gain": (levels, N),
                "entropy_bottleneck.quantiles": (N, 1, 3)}
    for name, shape in expected.items():
        got = tuple(state[name].shape) if name in state else shape
        if got != shape:
            raise WeightsError(f"{path} does not fit the {ARCHITECTURE} architecture: "
                               f"{name} has shape {got}, expected {shape} "
                               f"(N={N}, M={M}, {levels} levels)")


def _resize_cdf_buffers(model: "torch.nn.Module", state: dict) -> None:
    """The CDF buffers are empty until ``update()``; give them the stored shapes first."""
    for name, buf in model.named_buffers():
        if name.rsplit(".", 1)[-1] in _CDF_BUFFERS and name in state:
            mod = model.get_submodule(name.rsplit(".", 1)[0])
            setattr(mod, name.rsplit(".", 1)[-1], buf.new_empty(state[name].shape))


def export(model: "VariableRateHyperprior", out: str | os.PathLike, model_id: str,
           extra: dict[str, str] | None = None) -> bytes:
    """Write the shipped file: transforms in half precision, entropy models in float32,
    CDF tables computed from exactly the values a loader will see. Returns its hash."""
    import torch
    from safetensors.torch import save_file

    with torch.no_grad():
        for name, p in model.named_parameters():
            if _stored_half(name, p):
                p.copy_(p.half().float())
    model.update()
    params = dict(model.named_parameters())
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().contiguous()
        state[k] = v.half() if k in params and _stored_half(k, v) else v
    meta = {"architecture": type(model).__name__, "model_id": model_id, "N": str(model.N),
            "M": str(model.M), "lambdas": json.dumps([float(x) for x in model.lambdas])}
    meta.update(context_metadata(model))
    meta.update(extra or {})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    return file_hash(out)


def context_metadata(model: "torch.nn.Module") -> dict[str, str]:
    """The context's constructor sizes as metadata strings (none for the hyperprior)."""
    context = getattr(model, "context", None)
    if context is None:
        return {}
    if hasattr(context, "groups"):
        return {"groups": json.dumps(list(context.groups)),
                "chan": str(context.chan[1].out_channels if len(context.groups) > 1 else 1),
                "spat": str(context.spat[0].out_channels),
                "hidden": str(context.ep_n[0][0].out_channels), "kernel": str(context.kernel)}
    return {"ctx": str(context.ctx.out_channels), "hidden": str(context.ep[0].out_channels),
            "kernel": str(context.kernel)}


def _stored_half(name: str, t: "torch.Tensor") -> bool:
    """Only the transforms' parameters: entropy models, gains and GDN's tiny constant
    buffers (2^-36 underflows in half precision) stay float32."""
    import torch

    return t.dtype == torch.float32 and name.split(".")[0] in ("g_a", "g_s", "h_a", "h_s",
                                                               "context")

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
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import WeightsError

if TYPE_CHECKING:
    import torch

    from .model import VariableRateHyperprior

DEFAULT_WEIGHTS = "vaecodec-hyperprior-vr.safetensors"
ARCHITECTURE = "VariableRateHyperprior"
_CDF_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


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
    return hashlib.sha256(Path(path).read_bytes()).digest()[:8]


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
        raise WeightsError(f"cannot read weights file {path}: {e}") from None


@lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int) -> LoadedModel:
    from .model import VariableRateHyperprior

    meta = read_metadata(path)
    if meta.get("architecture") != ARCHITECTURE:
        raise WeightsError(f"{path} holds no {ARCHITECTURE} weights "
                           f"(architecture: {meta.get('architecture', 'unknown')})")
    try:
        N, M = int(meta["N"]), int(meta["M"])
        lambdas = tuple(json.loads(meta["lambdas"]))
    except (KeyError, ValueError) as e:
        raise WeightsError(f"{path}: incomplete metadata ({e})") from None
    state = load_state(path)
    model = VariableRateHyperprior(N=N, M=M, lambdas=lambdas)
    _resize_cdf_buffers(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise WeightsError(f"{path} does not fit the {ARCHITECTURE} architecture: {first}"
                           ) from None
    if model.gaussian_conditional._quantized_cdf.numel() == 0:
        raise WeightsError(f"{path} has no CDF tables: export it with `vaecodec export`")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(model, meta.get("model_id", Path(path).stem), file_hash(path), Path(path))


def load(path: str | os.PathLike | None = None) -> LoadedModel:
    """The model for ``path`` (default: the shipped weights), loaded once per process."""
    p = Path(path) if path else default_weights_path()
    try:
        st = p.stat()
    except OSError:
        raise WeightsError(f"weights file not found: {p}") from None
    return _load_cached(str(p.resolve()), st.st_mtime_ns)


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
    meta = {"architecture": ARCHITECTURE, "model_id": model_id, "N": str(model.N),
            "M": str(model.M), "lambdas": json.dumps([float(x) for x in model.lambdas])}
    meta.update(extra or {})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, out)
    return file_hash(out)


def _stored_half(name: str, t: "torch.Tensor") -> bool:
    """Only the transforms' parameters: entropy models, gains and GDN's tiny constant
    buffers (2^-36 underflows in half precision) stay float32."""
    import torch

    return t.dtype == torch.float32 and name.split(".")[0] in ("g_a", "g_s", "h_a", "h_s")

"""Pixels <-> entropy-coded strings: padding, quality -> rate level, device, inference mode.

Knows the model and the container's Header, nothing of files or Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import metrics
from .bitstream import LATENT_STRIDE, Header, as_float32, check_dimensions, latent_shape
from .errors import DecodeMismatchError, FormatError, VaecodecError, WeightsMismatchError
from .weights import LoadedModel


@dataclass
class Coded:
    header: Header
    y_string: bytes
    z_string: bytes


#: Encoder search iterations per effort level (0: none; see refine.py). Each iteration is one
#: forward and backward pass of g_s: about 0.26 s for a 768 x 512 image on 2 CPU cores.
EFFORT_ITERATIONS: tuple[int, ...] = (0, 25, 50, 100, 200)


def quality_to_level(quality: float, levels: int) -> float:
    """0 -> the lowest trained rate, 100 -> the highest, linear in between (in log-lambda,
    since the levels form a geometric lambda grid)."""
    return float(quality) / 100.0 * (levels - 1)


def _device(device: str | None):
    import torch

    if device in (None, "cpu"):
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VaecodecError(f"device {device} requested but no GPU is available")
    return torch.device(device)


@dataclass
class Analysis:
    """An image after g_a and h_a: all of encoding that does not depend on the rate, so rate
    control runs the analysis transform once and only re-quantizes per try."""

    rgb: np.ndarray
    mode: str
    y: Any
    z: Any


def analyze_pixels(rgb: np.ndarray, loaded: LoadedModel, mode: str = "RGB",
                   device: str | None = None, fast: bool = False) -> Analysis:
    """``rgb``: HxWx3 uint8. Pads by edge replication (zeros would cost bits on a hard edge).
    ``fast``: the transforms in bfloat16 (see ``bf16``)."""
    import torch

    h, w = rgb.shape[:2]
    check_dimensions(w, h)
    dev = _device(device)
    model = loaded.model.to(dev)
    zh, zw = latent_shape(w, h)
    ph, pw = zh * LATENT_STRIDE, zw * LATENT_STRIDE
    with torch.inference_mode():
        x = torch.from_numpy(np.require(rgb, np.uint8, ["C", "W"])).to(dev).permute(2, 0, 1)[None]
        x = x.float().div_(255)
        if (ph, pw) != (h, w):
            x = torch.nn.functional.pad(x, (0, pw - w, 0, ph - h), mode="replicate")
        with bf16(dev, fast):
            y, z = model.analyze(x)
        del x
        y, z = y.float(), z.float()
    return Analysis(rgb, mode, y, z)


def code_at(a: Analysis, quality: float, loaded: LoadedModel, integer: bool = True,
            effort: int = 0, rdoq: bool = True) -> tuple[Coded, Any]:
    """The analysis at one quality -> the coded strings and header, and the decoder's latent
    (``reconstruct`` turns it into the pixels the decoder will produce).

    ``effort`` > 0 searches for better symbols for this image (refine.py) and keeps the
    search's result only where it lowers the actual rate-distortion cost of the file, so
    more effort never gives a worse file than effort 0 at the same quality. ``rdoq``: the
    plain encode rounds rate-distortion optimally (rdoq.py) rather than to nearest; the
    search's result is always rounded to nearest, which is what it optimised for."""
    import torch

    _check_quality(quality)
    iterations = _check_effort(effort)
    quality = as_float32(quality)
    level = quality_to_level(quality, loaded.model.levels)
    coded, y_hat = _code_latent(a, a.y, quality, level, loaded, integer, rdoq)
    if not iterations:
        return coded, y_hat
    from . import refine

    x = torch.from_numpy(np.require(a.rgb, np.uint8, ["C", "W"])).to(a.y.device)
    x = x.permute(2, 0, 1)[None]
    y = refine.refine(loaded.model, a.y, a.z, x, level, iterations)
    searched, y_hat_s = _code_latent(a, y, quality, level, loaded, integer, rdoq=False)
    lam = loaded.model.lambda_for(level)
    cost = [_rd_cost(a, c, yh, loaded, lam) for c, yh in ((coded, y_hat), (searched, y_hat_s))]
    return (searched, y_hat_s) if cost[1] < cost[0] else (coded, y_hat)


def _code_latent(a: Analysis, y: Any, quality: float, level: float, loaded: LoadedModel,
                 integer: bool, rdoq: bool) -> tuple[Coded, Any]:
    import torch

    h, w = a.rgb.shape[:2]
    with torch.inference_mode():
        out = loaded.model.compress_latent(y, a.z, level, integer=integer, rdoq=rdoq)
    y_strings, z_strings = out["strings"]
    header = Header(width=w, height=h, mode=a.mode, quality=quality, model_id=loaded.model_id,
                    model_hash=loaded.model_hash, z_shape=tuple(out["shape"]),
                    symbols_crc=out["symbols_crc"], latent_codec=loaded.model.LATENT_CODEC)
    return Coded(header, y_strings[0], z_strings[0]), out["y_hat"]


def _rd_cost(a: Analysis, coded: Coded, y_hat: Any, loaded: LoadedModel, lam: float) -> float:
    """The training objective measured on the real thing: the decoder's 8-bit pixels and the
    strings' bytes (the rest of the file is the same for both candidates)."""
    h, w = a.rgb.shape[:2]
    err = reconstruct(a, y_hat, loaded).astype(np.float64) - a.rgb
    bits = 8 * (len(coded.y_string) + len(coded.z_string))
    return metrics.rd_cost(lam, float(np.mean(err * err)), bits / (h * w))


def reconstruct(a: Analysis, y_hat: Any, loaded: LoadedModel) -> np.ndarray:
    """The decoder's pixels for a latent from ``code_at``: the same synthesis and rounding as
    ``decode_pixels``, without entropy decoding."""
    import torch

    with torch.inference_mode():
        x = loaded.model.synthesize(y_hat, device=a.y.device)
        return _to_uint8(x, *a.rgb.shape[:2])


def encode_pixels(rgb: np.ndarray, quality: float, loaded: LoadedModel, mode: str = "RGB",
                  device: str | None = None, integer: bool = True, fast: bool = False,
                  effort: int = 0, rdoq: bool = True) -> Coded:
    _check_quality(quality)  # before the analysis transform, the expensive part
    _check_effort(effort)
    return code_at(analyze_pixels(rgb, loaded, mode, device, fast), quality, loaded, integer,
                   effort, rdoq)[0]


def bf16(dev, on: bool):
    """bfloat16 autocast around a transform, or nothing.

    The transforms are ~90% of coding time and already run near the float32 FMA peak;
    bfloat16 dot products (AVX512-BF16, AMX, tensor cores) are ~2x that. The model was trained
    with exactly this autocast, so the cost is small (9 Kodak images, weights 9e0035e6:
    analysis +0.1% bpp at equal PSNR; synthesis -0.005 dB at q50, -0.04 dB at q90; 24 images at
    q50 with d9f97999: +0.07% bpp, -0.011 dB both together). It is opt-in because it
    changes what is computed: the analysis gives other symbols than float32 would (still a
    valid file, decoded like any other), and the synthesis other pixels, the way djpeg's
    ``-dct fast`` does. The entropy coder's inputs never see it: they come from the integer
    hyper-synthesis, so files decode identically whatever either side chose."""
    import contextlib

    import torch

    from . import fastpath

    if not on or not fastpath.bf16_is_fast(dev):
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16)


def _check_effort(effort: int) -> int:
    """Effort level -> search iterations (refine.EFFORT_ITERATIONS, mirrored here so that a
    bad value fails before torch is imported)."""
    if isinstance(effort, bool) or not isinstance(effort, (int, np.integer)) or not (
            0 <= effort < len(EFFORT_ITERATIONS)):
        raise VaecodecError(f"effort must be an integer 0..{len(EFFORT_ITERATIONS) - 1}, "
                            f"got {effort!r}")
    return EFFORT_ITERATIONS[int(effort)]


def _check_quality(quality: float) -> None:
    if not (0.0 <= float(quality) <= 100.0):
        raise VaecodecError(f"quality must be between 0 and 100, got {quality}")


def _to_uint8(x, h: int, w: int) -> np.ndarray:
    import torch

    x = x[0, :, :h, :w]
    return np.ascontiguousarray(x.mul(255).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy())


def decode_pixels(coded: Coded, loaded: LoadedModel, device: str | None = None,
                  integer: bool = True, fast: bool = False) -> np.ndarray:
    """Returns HxWx3 uint8 of exactly the header's size, or raises if the decoded symbols'
    CRC differs from the encoder's (a desynchronised range decoder, never a wrong image).
    ``fast``: the synthesis in bfloat16 (see ``bf16``)."""
    import torch

    h = coded.header
    if h.model_hash != loaded.model_hash:
        raise WeightsMismatchError(
            f"this file was encoded with other weights ({h.model_id}, hash "
            f"{h.model_hash.hex()}); the loaded weights are {loaded.model_id} "
            f"({loaded.model_hash.hex()})")
    if h.latent_codec != loaded.model.LATENT_CODEC:
        raise FormatError(f"corrupt .vae file: its y is coded with the {h.latent_codec} latent "
                          f"codec, but its weights ({h.model_id}) code with the "
                          f"{loaded.model.LATENT_CODEC}")
    dev = _device(device)
    model = loaded.model.to(dev)
    with torch.inference_mode():
        try:
            y, z = _bounded_for_range_decoder(coded, model)
            x, crc = model.decompress([[y], [z]], h.z_shape,
                                      quality_to_level(h.quality, model.levels),
                                      integer=integer, device=dev,
                                      synthesis=bf16(dev, fast))
        except (RuntimeError, ValueError) as e:
            raise VaecodecError(f"corrupt .vae file: entropy decoding failed ({e})") from None
        if crc != h.symbols_crc:
            raise DecodeMismatchError(
                "decoded symbols do not match the encoder's (symbol checksum mismatch): the "
                "file is corrupt or was encoded by an incompatible implementation")
        return _to_uint8(x, h.height, h.width)


def _bounded_for_range_decoder(coded: Coded, model) -> tuple[bytes, bytes]:
    """Pad both strings with zeros so CompressAI's range decoder stays inside them.

    Its C++ rANS decoder reads the string without bounds checks: every symbol it decodes may
    pull one more 32-bit word, whether or not the string has one (reported upstream:
    https://github.com/InterDigitalInc/CompressAI/issues/300).
    On a hostile file (valid CRC, garbage or truncated strings) it then reads whatever memory
    follows: a different image on every run, or a segfault (a 68-byte file declaring
    256x256 with empty strings crashes the process). A valid string is consumed exactly, so
    the zeros change nothing for it. The bound: 2 words at start, at most one per symbol,
    and bypass-coded values (escape nibbles) at most 16 bytes per string byte, plus slack.
    """
    zh, zw = coded.header.z_shape
    z_symbols = model.N * zh * zw
    y_symbols = model.M * (4 * zh) * (4 * zw)
    return _zero_pad(coded.y_string, y_symbols), _zero_pad(coded.z_string, z_symbols)


def _zero_pad(s: bytes, symbols: int) -> bytes:
    return s + bytes(4 * (symbols + 2) + 16 * len(s) + 65536)

"""Pixels <-> entropy-coded strings: padding, quality -> rate level, device, inference mode.

Knows the model and the container's Header, nothing of files or Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import machine, metrics
from .bitstream import (LATENT_STRIDE, TILE_PX, Header, as_float32, check_dimensions, join_tiles,
                        latent_shape, split_tiles, version_for)
from .errors import DecodeMismatchError, FormatError, VaecodecError, WeightsMismatchError
from .weights import LoadedModel

#: Progress of one encode or decode: ``progress(done, total)`` after every tile of work.
Progress = Callable[[int, int], None]
#: The container's y tiles in y latents (16 pixels each).
TILE_LATENTS = TILE_PX * 4 // LATENT_STRIDE
#: Bytes per pixel a decode holds besides one tile's working memory: the latent (192 float32
#: per 16 x 16 pixels), the decoded RGB and the Pillow image made from it (4 bytes a pixel).
DECODE_BYTES_PER_PIXEL = 10
#: One tile's working memory (transforms and coder), with margin.
TILE_WORK_BYTES = 600 << 20


@dataclass
class Coded:
    header: Header
    y_string: bytes
    z_string: bytes


#: Encoder search per effort level (0: none; see refine.py). An iteration is one pass of the
#: decoder's float context and one forward and backward pass of g_s: about 0.3 s for a
#: 768 x 512 image on 2 CPU cores (bfloat16 g_s where the CPU has bfloat16 dot products).
#: What each level gains, measured on held-out photos: benchmarks/effort/table.md.
EFFORT_ITERATIONS: tuple[int, ...] = (0, 40, 80, 160, 320)


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


class _Padded:
    """The image as g_a sees it, a window at a time: float in [0, 1], padded to a multiple
    of 64 by edge replication (zeros would cost bits on a hard edge). The whole image never
    exists as floats (12 bytes a pixel); every window starts inside the image, so padding a
    window is padding the image."""

    def __init__(self, rgb: np.ndarray, dev: Any):
        import torch

        h, w = rgb.shape[:2]
        zh, zw = latent_shape(w, h)
        self.shape = (1, 3, zh * LATENT_STRIDE, zw * LATENT_STRIDE)
        self.u8 = torch.from_numpy(np.require(rgb, np.uint8, ["C", "W"]))
        self.dev = dev

    def window(self, r0: int, r1: int, c0: int, c1: int) -> Any:
        import torch

        h, w = self.u8.shape[:2]
        x = self.u8[r0:min(r1, h), c0:min(c1, w)].to(self.dev).permute(2, 0, 1)[None]
        x = x.float().div_(255)
        if x.shape[-2:] != (r1 - r0, c1 - c0):
            x = torch.nn.functional.pad(x, (0, c1 - c0 - x.shape[-1], 0, r1 - r0 - x.shape[-2]),
                                        mode="replicate")
        return x


def analyze_pixels(rgb: np.ndarray, loaded: LoadedModel, mode: str = "RGB",
                   device: str | None = None, fast: bool = False,
                   progress: Progress | None = None) -> Analysis:
    """``rgb``: HxWx3 uint8. ``fast``: the transforms in bfloat16 (see ``bf16``).
    ``progress``: told of each analysis tile, out of this plus the coding tiles to come."""
    import torch

    h, w = rgb.shape[:2]
    check_dimensions(w, h, version_for(loaded.model.LATENT_CODEC, w, h))
    dev = _device(device)
    model = loaded.model.to(dev)
    with torch.inference_mode():
        with bf16(dev, fast):
            y, z = model.analyze(_Padded(rgb, dev), tick=_ticker(progress, 0, 2 * _tiles(w, h)))
        y, z = y.float(), z.float()
    return Analysis(rgb, mode, y, z)


def _tiles(w: int, h: int) -> int:
    """How many transform tiles (and, for a context model, coding tiles) an image has."""
    rows, cols = (-(-n // TILE_PX) for n in (h, w))
    return rows * cols


def _ticker(progress: Progress | None, start: int, total: int) -> Callable[[], None] | None:
    if progress is None:
        return None
    done = [start]

    def tick() -> None:
        done[0] += 1
        progress(min(done[0], total), total)

    return tick


def code_at(a: Analysis, quality: float, loaded: LoadedModel, integer: bool = True,
            effort: int = 0, rdoq: bool = True, y_hat: bool = True,
            progress: Progress | None = None) -> tuple[Coded, Any]:
    """The analysis at one quality -> the coded strings and header, and the decoder's latent
    (``reconstruct`` turns it into the pixels the decoder will produce).

    ``effort`` > 0 searches for better symbols for this image (refine.py) and keeps the
    search's result only where it lowers the actual rate-distortion cost of the file, so
    more effort never gives a worse file than effort 0 at the same quality. ``rdoq``: the
    plain encode rounds rate-distortion optimally (rdoq.py) rather than to nearest; the
    search's result is always rounded to nearest, which is what it optimised for.
    ``y_hat=False`` returns None for the latent (and saves its memory) when effort is 0."""
    import torch

    _check_quality(quality)
    iterations = _check_effort(effort)
    quality = as_float32(quality)
    level = quality_to_level(quality, loaded.model.levels)
    h, w = a.rgb.shape[:2]
    tick = _ticker(progress, _tiles(w, h), 2 * _tiles(w, h))
    coded, y_hat = _code_latent(a, a.y, quality, level, loaded, integer, rdoq,
                                y_hat or bool(iterations), tick)
    if not iterations:
        return coded, y_hat
    from . import refine

    x = torch.from_numpy(np.require(a.rgb, np.uint8, ["C", "W"])).to(a.y.device)
    x = x.permute(2, 0, 1)[None]
    y, z = refine.refine(loaded.model, a.y, a.z, x, level, iterations, coding_tile=TILE_LATENTS)
    searched, y_hat_s = _code_latent(a, y, quality, level, loaded, integer, rdoq=False, z=z)
    lam = loaded.model.lambda_for(level)
    cost = [_rd_cost(a, c, yh, loaded, lam) for c, yh in ((coded, y_hat), (searched, y_hat_s))]
    return (searched, y_hat_s) if cost[1] < cost[0] else (coded, y_hat)


def _code_latent(a: Analysis, y: Any, quality: float, level: float, loaded: LoadedModel,
                 integer: bool, rdoq: bool, want_y_hat: bool = True,
                 tick: Callable[[], None] | None = None, z: Any = None) -> tuple[Coded, Any]:
    """The context models code y in the container's tiles (one tile: a version 2 file, the
    same bytes as coding the whole image); the hyperprior writes version 1 as ever. ``z``:
    the hyper-latent to code, if not the analysis's own (the encoder's search)."""
    import torch

    z = a.z if z is None else z
    h, w = a.rgb.shape[:2]
    model = loaded.model
    version = version_for(model.LATENT_CODEC, w, h)
    with torch.inference_mode():
        if version == 1:
            out = model.compress_latent(y, z, level, integer=integer, rdoq=rdoq)
            y_string = out["strings"][0][0]
        else:
            out = model.compress_tiles(y, z, level, TILE_LATENTS, integer=integer, rdoq=rdoq,
                                       y_hat=want_y_hat, tick=tick)
            tiles = out["strings"][0]
            y_string = tiles[0] if version == 2 else join_tiles(list(zip(out["tile_crcs"],
                                                                         tiles)))
    header = Header(width=w, height=h, mode=a.mode, quality=quality, model_id=loaded.model_id,
                    model_hash=loaded.model_hash, z_shape=tuple(out["shape"]),
                    symbols_crc=out["symbols_crc"], latent_codec=model.LATENT_CODEC,
                    version=version)
    return Coded(header, y_string, out["strings"][1][0]), out["y_hat"]


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
    return _synthesize_u8(loaded.model, y_hat, *a.rgb.shape[:2], a.y.device)


def _synthesize_u8(model: Any, y_hat: Any, h: int, w: int, dev: Any, context: Any = None,
                   tick: Callable[[], None] | None = None) -> np.ndarray:
    """g_s tile by tile straight into HxWx3 uint8: the whole image never exists as floats
    (12 bytes a pixel), and every pixel is rounded exactly as ``_to_uint8`` rounds it."""
    import contextlib

    import torch

    out = np.empty((h, w, 3), np.uint8)

    def sink(part: Any, r0: int, r1: int, c0: int, c1: int) -> None:
        if r0 < h and c0 < w:
            r1, c1 = min(r1, h), min(c1, w)
            out[r0:r1, c0:c1] = _to_uint8(part.float(), r1 - r0, c1 - c0)

    with torch.inference_mode(), context or contextlib.nullcontext():
        model.synthesize(y_hat, device=dev, sink=sink, tick=tick)
    return out


def encode_pixels(rgb: np.ndarray, quality: float, loaded: LoadedModel, mode: str = "RGB",
                  device: str | None = None, integer: bool = True, fast: bool = False,
                  effort: int = 0, rdoq: bool = True, progress: Progress | None = None
                  ) -> Coded:
    _check_quality(quality)  # before the analysis transform, the expensive part
    _check_effort(effort)
    a = analyze_pixels(rgb, loaded, mode, device, fast, progress)
    return code_at(a, quality, loaded, integer, effort, rdoq, y_hat=False, progress=progress)[0]


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
    """Effort level -> search iterations (EFFORT_ITERATIONS, checked here so that a
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
                  integer: bool = True, fast: bool = False,
                  progress: Progress | None = None) -> np.ndarray:
    """Returns HxWx3 uint8 of exactly the header's size, or raises if the decoded symbols'
    CRC differs from the encoder's (a desynchronised range decoder, never a wrong image).
    ``fast``: the synthesis in bfloat16 (see ``bf16``). ``progress``: after every tile."""
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
    if h.version == 3 or (h.version == 2 and _tiles(h.width, h.height) == 1):
        return _decode_tiles(coded, model, dev, integer, fast, progress)
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
            raise _mismatch()
        return _to_uint8(x, h.height, h.width)


def _decode_tiles(coded: Coded, model: Any, dev: Any, integer: bool, fast: bool,
                  progress: Progress | None) -> np.ndarray:
    """Tile by tile: each tile's symbols are checked against its CRC as soon as they are
    decoded, so a corrupt file stops at its first bad tile."""
    import torch

    h = coded.header
    _check_memory(h.width, h.height)
    if h.version == 3:
        tiles = split_tiles(coded.y_string, h.width, h.height)
    else:
        tiles = [(h.symbols_crc, coded.y_string)]
    n = len(tiles)
    tick = _ticker(progress, 0, 2 * n)
    per_tile = model.M * TILE_LATENTS * TILE_LATENTS

    class Strings:  # padded one at a time: all at once would be ~3 MB a tile
        def __getitem__(self, i: int) -> bytes:
            return _zero_pad(tiles[i][1], per_tile)

    def done(i: int, crc: int) -> None:
        if crc != tiles[i][0]:
            raise _mismatch(f" in y tile {i + 1} of {n}")
        if tick is not None:
            tick()

    level = quality_to_level(h.quality, model.levels)
    with torch.inference_mode():
        z = _zero_pad(coded.z_string, model.N * h.z_shape[0] * h.z_shape[1])
        try:
            y_hat, crc = model.decompress_tiles(Strings(), [z], h.z_shape, level, TILE_LATENTS,
                                                integer=integer, done=done)
        except (RuntimeError, ValueError) as e:
            raise VaecodecError(f"corrupt .vae file: entropy decoding failed ({e})") from None
        if crc != h.symbols_crc:
            raise _mismatch()
        return _synthesize_u8(model, y_hat, h.height, h.width, dev, bf16(dev, fast), tick)


def _mismatch(where: str = "") -> DecodeMismatchError:
    """A desynchronised range decoder: never write what it gave."""
    return DecodeMismatchError(
        f"decoded symbols do not match the encoder's{where} (symbol checksum mismatch): the "
        "file is corrupt or was encoded by an incompatible implementation")


def _check_memory(width: int, height: int) -> None:
    """Refuse, before allocating, an image this machine cannot hold: a small file can
    declare 65535 x 65535 pixels (a decompression bomb), and running out of memory half-way
    would kill the process instead of saying why."""
    short = machine.memory_shortfall(width * height * DECODE_BYTES_PER_PIXEL + TILE_WORK_BYTES)
    if short:
        raise VaecodecError(f"not enough memory for a {width}x{height} image: decoding it "
                            + short)


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

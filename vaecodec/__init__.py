"""vaecodec: a learned image codec (mean-scale hyperprior, variable rate) with a CLI.

The public API is two functions and one exception::

    import vaecodec
    data = vaecodec.encode(PIL.Image.open("a.png"), quality=75)   # -> bytes of a .vae file
    image = vaecodec.decode(data)                                 # -> PIL.Image, same size/mode
    vaecodec.read_header(data)                                    # -> Header (no torch needed)

Torch is imported only when a model is needed, so ``vaecodec --help`` and ``info`` start fast.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Callable, Iterator

from .errors import VaecodecError

if TYPE_CHECKING:
    from PIL import Image

    from .bitstream import Header
    from .weights import LoadedModel

__version__ = "2.0.0.dev0"
__all__ = ["encode", "decode", "read_header", "VaecodecError", "__version__"]

DEFAULT_QUALITY = 75.0
ALPHA_TAG = b"ALPH"


def encode(image: "Image.Image", quality: float | None = None, *,
           size: int | None = None, bpp: float | None = None, psnr: float | None = None,
           model: str | os.PathLike | None = None, device: str | None = None,
           keep_metadata: bool = False, fast: bool = False, effort: int = 0,
           rdoq: bool = True, frame: int | None = None, threads: int | None = None,
           progress: "Callable[[int, int], None] | None" = None) -> bytes:
    """Compress a Pillow image to the bytes of a ``.vae`` file.

    ``quality`` is a float from 0 (the model's lowest rate) to 100 (its highest), default 75.
    Or give one target instead and the quality is searched for (``read_header(data).quality``
    tells which): ``size`` (bytes of the whole file, never exceeded; VaecodecError if even
    quality 0 is larger), ``bpp`` (the same, as bits per pixel) or ``psnr`` (dB over the
    colour planes, the closest the model reaches). ``model`` is a weights file (default:
    the shipped one); ``device`` "cpu" (default), "cuda" or "auto". The ICC profile is
    always kept; EXIF and XMP only with ``keep_metadata=True``. ``fast=True`` runs the
    analysis transform in bfloat16: about 1.7x faster encoding on CPUs with bfloat16 dot
    products, about 0.1% more bits at the same quality, and a file any decoder reads.
    ``effort`` 1..4 makes the encoder search for better symbols for this very image
    (``codec.EFFORT_TABLE``, refine.py): a lower rate-distortion cost at the same quality for
    more encode time; 0 (default) does not search. The file is an ordinary one: decoders do
    not know or care. With a target, the quality is fitted without search and the search
    runs once at that quality, its file kept only where it meets the target and is better
    (for a size: a higher PSNR; for a PSNR: no more bytes).
    ``rdoq`` (default) rounds the latent where it saves more bits than it costs in
    distortion (rdoq.py: ~1-3% less rate-distortion cost at low rates, a few ms); False
    rounds to nearest, as CompressAI does (bit-for-bit comparisons with it).

    The pixels are coded upright: an EXIF Orientation is applied (as
    ``ImageOps.exif_transpose`` does) and reset to 1 in the EXIF and XMP kept. An animation
    or a multi-page file is refused (``InputImageError`` naming its frame count) unless
    ``frame`` (0-based) picks one: a .vae file holds one image, and coding the first frame
    of a GIF without a word would lose the rest. ``threads`` is the number of CPU threads
    for this call (default: torch's, one per core). ``progress(done, total)`` is called
    after every tile of work (a big image has one per 1024 x 1024 pixels and transform):
    the CLI's progress bar.
    """
    with _threads(threads):
        return _encode(image, quality, size, bpp, psnr, model, device, keep_metadata, fast,
                       effort, rdoq, frame, progress)


def _encode(image: "Image.Image", quality: float | None, size: int | None,
            bpp: float | None, psnr: float | None, model: str | os.PathLike | None,
            device: str | None, keep_metadata: bool, fast: bool, effort: int, rdoq: bool,
            frame: int | None, progress: "Callable[[int, int], None] | None" = None) -> bytes:
    from . import bitstream, codec, image as image_io, metrics, ratecontrol, weights

    codec._check_effort(effort)
    targets = {k: v for k, v in (("size", size), ("bpp", bpp), ("psnr", psnr)) if v is not None}
    if len(targets) + (quality is not None) > 1:
        raise VaecodecError("give one of quality, size, bpp and psnr, not "
                            + " and ".join(["quality"] * (quality is not None) + list(targets)))
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int)
                              or frame < 0):
        raise VaecodecError(f"frame must be a frame number from 0, got {frame!r}")
    image = image_io.prepare(image, frame)
    planes = image_io.split(image)
    loaded = weights.load(model)
    side = {ALPHA_TAG: image_io.pack_alpha(planes.alpha)} if planes.alpha is not None else {}
    side.update(image_io.metadata_chunks(image, planes.mode, keep_metadata))

    def pack(coded: "codec.Coded") -> bytes:
        return bitstream.pack(bitstream.Container(coded.header, coded.y_string,
                                                  coded.z_string, side))

    if not targets:
        q = DEFAULT_QUALITY if quality is None else quality
        return pack(codec.encode_pixels(planes.rgb, q, loaded, mode=planes.mode, device=device,
                                        fast=fast, effort=effort, rdoq=rdoq, progress=progress))
    analysis = codec.analyze_pixels(planes.rgb, loaded, mode=planes.mode, device=device,
                                    fast=fast)
    # The quality is fitted with the plain encoder (a try costs milliseconds, a searched one
    # seconds); the search then runs once, at the quality found, and its file replaces the
    # plain one only where it is better on the side the target leaves free: for a size, at
    # most the limit and a higher PSNR; for a PSNR, as close to it and no more bytes.
    measure = psnr is not None or bool(effort)

    def try_at(q: float, e: int) -> tuple[bytes, float | None]:
        coded, y_hat = codec.code_at(analysis, q, loaded, effort=e, rdoq=rdoq, y_hat=measure)
        value = (metrics.psnr(planes.rgb, codec.reconstruct(analysis, y_hat, loaded))
                 if measure else None)
        return pack(coded), value

    if psnr is not None:
        fit = ratecontrol.fit_psnr(lambda q: try_at(q, 0), lambda r: r[1], float(psnr))

        def better(r: tuple[bytes, float | None]) -> bool:
            miss = abs(fit.result[1] - psnr)
            return abs(r[1] - psnr) <= max(0.05, miss) and len(r[0]) <= len(fit.result[0])
    else:
        h, w = planes.rgb.shape[:2]
        limit = int(size) if size is not None else int(float(bpp) * w * h / 8)
        fit = ratecontrol.fit_size(lambda q: try_at(q, 0), lambda r: len(r[0]), limit)

        def better(r: tuple[bytes, float | None]) -> bool:
            return len(r[0]) <= limit and r[1] > fit.result[1]
    if effort:
        searched = try_at(fit.quality, effort)
        if better(searched):
            return searched[0]
    return fit.result[0]


def decode(data: bytes, *, model: str | os.PathLike | None = None,
           device: str | None = None, fast: bool = False,
           threads: int | None = None,
           progress: "Callable[[int, int], None] | None" = None) -> "Image.Image":
    """Decompress the bytes of a ``.vae`` file into an image of its original size and mode.

    Without ``model`` the weights are found by the hash the file records, among the
    installed ones; metadata stored in the file is in ``image.info`` ("icc_profile",
    "exif", "xmp"). Side chunks this version does not know are ignored. ``fast=True`` runs
    the synthesis transform in bfloat16 (like djpeg's ``-dct fast``): faster, pixels within
    about a level of the exact decode (-0.005 dB at quality 50, -0.04 dB at 90 on Kodak).
    ``threads``: CPU threads for this call (default: torch's, one per core).
    ``progress(done, total)``: after every tile of work, as for ``encode``.
    """
    with _threads(threads):
        return _decode(data, model, device, fast, progress)


def _decode(data: bytes, model: str | os.PathLike | None, device: str | None,
            fast: bool, progress: "Callable[[int, int], None] | None" = None) -> "Image.Image":
    from . import bitstream, codec, image as image_io

    c = bitstream.unpack(data)
    h = c.header
    alpha = None
    if h.mode in ("RGBA", "LA"):
        if ALPHA_TAG not in c.side:
            raise bitstream.FormatError(f"corrupt .vae file: {h.mode} image without alpha")
        alpha = image_io.unpack_alpha(c.side[ALPHA_TAG], h.width, h.height)
    info = image_io.metadata_info(c.side, h.mode)
    loaded = _weights_for(h, model)
    rgb = codec.decode_pixels(codec.Coded(h, c.y_string, c.z_string), loaded, device=device,
                              fast=fast, progress=progress)
    im = image_io.merge(rgb, alpha, h.mode)
    im.info.update(info)
    return im


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's thread count for one call, then back: a library call must not leave the
    process's thread pool changed (the CLI's --threads and -j workers use it)."""
    if n is None:
        yield
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise VaecodecError(f"threads must be a whole number of at least 1, got {n!r}")
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


def read_header(data: bytes) -> "Header":
    """Parse and validate a ``.vae`` file's header (and its CRC) without decoding it."""
    from . import bitstream

    return bitstream.unpack(data).header


def _weights_for(h: "Header", model: str | os.PathLike | None) -> "LoadedModel":
    """The weights a file needs: the given ones (``decode_pixels`` refuses them, naming both,
    if the hash differs), else the installed file with the recorded hash."""
    from . import weights
    from .errors import WeightsMismatchError

    if model is not None:
        return weights.load(model)
    path = weights.find_by_hash(h.model_hash)
    if path is None:
        have = ", ".join(map(weights.describe, weights.installed())) or "none"
        raise WeightsMismatchError(
            f"this file was encoded with other weights: it needs {h.model_id} (hash "
            f"{h.model_hash.hex()}), and no installed weights match (installed in "
            f"{weights.models_dir()}: {have}); pass that weights file with --model / model=")
    return weights.load(path)

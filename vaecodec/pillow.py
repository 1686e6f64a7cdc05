"""A Pillow plugin for ``.vae`` files: ``import vaecodec.pillow`` and Pillow reads and writes
them like any other format::

    import vaecodec.pillow
    from PIL import Image

    im = Image.open("photo.vae")              # the header is read and checked; no decoding
    im.load()                                 # decodes (vaecodec.decode), on first pixel use
    im.save("copy.vae", quality=60)           # vaecodec.encode; also size=, bpp=, psnr=,
                                              # keep_metadata=, effort=, fast=, frame=, ...

A thin shell over the public API, written the way pillow-heif and pillow-avif-plugin are:
an ``ImageFile`` subclass whose ``_open`` reads the header (size, mode, and the ICC profile,
EXIF and XMP into ``info``) and whose ``load`` decodes. Errors are the API's: a damaged file
raises ``vaecodec.errors.FormatError`` from ``Image.open`` (a file with another magic is left
to the other plugins), weights that do not match raise ``WeightsMismatchError`` from
``load``, and a failed save raises the encoder's error without leaving a new file behind
(Pillow removes it). Importing this module imports no torch; decoding and encoding do.
"""

from __future__ import annotations

from typing import IO, Any

from PIL import Image, ImageFile

from . import bitstream
from .errors import VaecodecError

FORMAT = "VAE"
MIME = "image/x-vae"
#: What ``im.save(..., **params)`` passes on to ``vaecodec.encode``; other Pillow save
#: parameters (``optimize``, ``dpi``, ...) mean nothing here and are ignored, as in other
#: plugins.
SAVE_PARAMS = ("quality", "size", "bpp", "psnr", "model", "device", "keep_metadata", "fast",
               "effort", "rdoq", "frame", "threads")


def _accept(prefix: bytes) -> bool:
    return prefix[:4] == bitstream.MAGIC


class VaeImageFile(ImageFile.ImageFile):
    """A ``.vae`` file opened by Pillow: header now, pixels on ``load``."""

    format = FORMAT
    format_description = "vaecodec learned image"

    def _open(self) -> None:
        from .image import metadata_info

        assert self.fp is not None
        data = self.fp.read()
        container = bitstream.unpack(data)      # FormatError for a damaged file, as decode
        h = container.header
        self.info.update(metadata_info(container.side, h.mode))
        self._mode = h.mode
        self._size = (h.width, h.height)
        self._data = data
        # a placeholder tile says "not loaded yet"; load() replaces it with the pixels
        self.tile = [ImageFile._Tile("vae", (0, 0) + self.size, 0, None)]

    def load(self) -> Any:
        if self.tile:
            import vaecodec

            decoded = vaecodec.decode(self._data)
            self.im = decoded.im
            self.info.update(decoded.info)
            self.tile = []
            self._data = b""
            if self._exclusive_fp and self.fp is not None:
                self.fp.close()
            self.fp = None
        return super().load()


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    import vaecodec

    params = {k: v for k, v in im.encoderinfo.items() if k in SAVE_PARAMS}
    fp.write(vaecodec.encode(im, **params))


def _save_all(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    """``save_all=True``: a .vae file holds one image, so only a one-frame image fits."""
    if im.encoderinfo.get("append_images"):
        raise VaecodecError("a .vae file holds one image: save the frames one file each")
    _save(im, fp, filename)


Image.register_open(FORMAT, VaeImageFile, _accept)
Image.register_save(FORMAT, _save)
Image.register_save_all(FORMAT, _save_all)
Image.register_extension(FORMAT, ".vae")
Image.register_mime(FORMAT, MIME)

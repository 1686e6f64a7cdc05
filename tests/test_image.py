"""image.py without the model: which picture of a file is coded (frames, EXIF orientation)
and the formats a decoded image is written in."""

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from vaecodec import image
from vaecodec.errors import InputImageError, VaecodecError

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def frames(n: int = 3, size=(24, 16)) -> list[Image.Image]:
    return [Image.new("RGB", size, COLOURS[i % 3]) for i in range(n)]


def multi_frame(fmt: str, n: int = 3) -> bytes:
    first, *rest = frames(n)
    buf = io.BytesIO()
    first.save(buf, format=fmt, save_all=True, append_images=rest, duration=100, loop=0)
    return buf.getvalue()


MULTI = [pytest.param("GIF", id="animated GIF"), pytest.param("PNG", id="APNG"),
         pytest.param("WEBP", id="animated WebP"), pytest.param("TIFF", id="multi-page TIFF")]


@pytest.mark.parametrize("fmt", MULTI)
def test_several_frames_are_refused_naming_the_count(fmt, tmp_path):
    p = tmp_path / f"anim.{fmt.lower()}"
    p.write_bytes(multi_frame(fmt))
    im = image.read_image(p)
    assert image.frame_count(im) == 3
    with pytest.raises(InputImageError) as e:
        image.prepare(im)
    msg = str(e.value)
    assert "anim." in msg and "3 frames" in msg and "--frame" in msg and "\n" not in msg


@pytest.mark.parametrize("fmt", MULTI)
def test_frame_picks_that_frame_and_leaves_the_image_as_it_was(fmt):
    im = image.read_image(multi_frame(fmt))
    for n in (2, 0, 1):
        got = image.prepare(im, n).convert("RGB")
        assert got.size == (24, 16)
        assert np.abs(np.asarray(got, float) - COLOURS[n]).max() <= 8, (fmt, n)
        assert im.tell() == 0                        # the caller's image is sought back
    with pytest.raises(InputImageError, match=r"no frame 3: its frames are 0\.\.2"):
        image.prepare(im, 3)


def test_one_frame_files_need_no_frame_and_accept_frame_0():
    im = Image.new("RGB", (8, 8), "red")
    assert image.prepare(im) is im and image.prepare(im, 0) is im
    with pytest.raises(InputImageError, match="no frame 1"):
        image.prepare(im, 1)


def jpeg_with_orientation(orientation: int, xmp: bytes | None = None) -> bytes:
    """A 64x32 picture whose halves and top band tell every transposition apart."""
    a = np.zeros((32, 64, 3), np.uint8)
    a[:, :32], a[:, 32:], a[:6] = (220, 30, 30), (30, 30, 220), (30, 200, 30)
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Test Camera Co."
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95, exif=exif.tobytes(),
                            **({"xmp": xmp} if xmp else {}))
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_applied_like_exif_transpose(orientation):
    im = image.read_image(jpeg_with_orientation(orientation))
    got = image.prepare(im)
    want = ImageOps.exif_transpose(im)
    assert got.size == want.size and np.array_equal(np.asarray(got), np.asarray(want))
    assert (got is im) == (orientation == 1)
    exif = Image.Exif()
    exif.load(got.info["exif"])
    assert exif[0x0112] == 1 and exif[0x010F] == "Test Camera Co."
    assert im.getexif()[0x0112] == orientation        # the caller's image is unchanged


def test_orientation_reset_patches_one_value_in_place():
    im = image.read_image(jpeg_with_orientation(6))
    before, after = im.info["exif"], image.prepare(im).info["exif"]
    assert len(before) == len(after)
    assert sum(x != y for x, y in zip(before, after)) == 1     # 6 -> 1, nothing else


def test_orientation_in_xmp_is_reset_too():
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
           b'02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/"'
           b' tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    im = image.read_image(jpeg_with_orientation(6, xmp))
    got = image.prepare(im)
    assert got.size == (32, 64)
    assert b'tiff:Orientation="1"' in got.info["xmp"] and b"Orientation=\"6\"" not in \
        got.info["xmp"]


# -- output formats ----------------------------------------------------------------------------


def rgba(w=40, h=24) -> Image.Image:
    a = np.zeros((h, w, 4), np.uint8)
    a[..., 0] = np.arange(w) * 6
    a[..., 1] = np.arange(h)[:, None] * 10
    a[..., 3] = 255
    a[:4, :4, 3] = 0
    return Image.fromarray(a, "RGBA")


def test_output_format_follows_the_extension():
    assert image.output_format("a.png") == image.output_format("a") == "PNG"
    assert image.output_format("a.TIF") == image.output_format("a.tiff") == "TIFF"
    assert image.output_format("a.bmp") == "BMP" and image.output_format("a.ppm") == "PPM"
    assert image.output_format("a.webp") == "WEBP"
    assert image.output_format("-", default="TIFF") == image.output_format("a", "TIFF") == "TIFF"
    with pytest.raises(VaecodecError, match=r"cannot write \.jpg files .*\.png.*\.webp"):
        image.output_format("out.jpg")


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "PPM", "WEBP"])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA"])
def test_every_format_holds_the_exact_pixels(fmt, mode):
    im = rgba().convert(mode)
    if fmt in ("BMP", "PPM") and mode in ("RGBA", "LA"):
        with pytest.raises(VaecodecError, match="no alpha channel"):
            image.image_bytes(im, fmt)
        return
    back = Image.open(io.BytesIO(image.image_bytes(im, fmt)))
    assert back.format == fmt
    assert np.array_equal(np.asarray(back.convert(mode)), np.asarray(im))


@pytest.mark.parametrize("fmt", ["TIFF", "WEBP", "PNG"])
def test_metadata_goes_where_the_format_holds_it(fmt):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "Test Camera Co."
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"         # DateTimeOriginal
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    im = Image.new("RGB", (16, 8), "teal")
    im.info.update(icc_profile=icc, exif=b"Exif\x00\x00" + exif.tobytes()[6:], xmp=xmp)
    back = Image.open(io.BytesIO(image.image_bytes(im, fmt)))
    back.load()
    assert back.info["icc_profile"] == icc
    got = back.getexif()
    assert got[0x010F] == "Test Camera Co."
    assert got.get_ifd(0x8769)[0x9003] == "2024:05:06 07:08:09"
    assert xmp in (back.info.get("xmp") or back.info.get("XML:com.adobe.xmp", "").encode())


def test_webp_size_limit_is_checked_before_decoding():
    with pytest.raises(VaecodecError, match="16383"):
        image.check_writable("WEBP", 20000, 10, "RGB")
    image.check_writable("TIFF", 20000, 10, "RGBA")

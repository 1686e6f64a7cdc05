"""Metadata: the ICC profile is kept by default, EXIF and XMP only on request, all of them as
side chunks that a decoder checks and bounds; unknown chunks are ignored."""

import functools
import io
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageCms
from PIL.PngImagePlugin import PngInfo

import vaecodec
from vaecodec import bitstream
from vaecodec.bitstream import TAG_EXIF, TAG_ICC, TAG_XMP
from vaecodec.cli import main
from vaecodec.errors import FormatError

from conftest import natural_image

XMP = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
       b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>'
       b'<?xpacket end="w"?>')


@functools.lru_cache(maxsize=None)
def srgb_profile() -> bytes:
    """One profile per test run: LittleCMS stamps the creation time into the header
    (bytes 24..35), so two calls a second apart differ."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def with_space(icc: bytes, space: bytes) -> bytes:
    """The same profile claiming another data colour space (header bytes 16..20)."""
    return icc[:16] + space + icc[20:]


def exif_bytes() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Test Camera Co."          # Make
    exif[0x0110] = "Model 7"                  # Model
    return exif.tobytes()


def png_with_metadata(path, im=None):
    im = im or natural_image(48, 32)
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    im.save(path, icc_profile=srgb_profile(), exif=exif_bytes(), pnginfo=info)
    return path


def opened(path) -> Image.Image:
    im = Image.open(path)
    im.load()
    return im


def test_icc_profile_is_kept_by_default():
    icc = srgb_profile()
    for mode in ("RGB", "RGBA", "P"):
        im = natural_image(40, 24).convert(mode)
        im.info["icc_profile"] = icc
        data = vaecodec.encode(im, 50)
        assert TAG_ICC in bitstream.unpack(data).side
        assert vaecodec.decode(data).info["icc_profile"] == icc


def test_icc_profile_is_deflated():
    im = natural_image(40, 24)
    im.info["icc_profile"] = icc = srgb_profile()
    side = bitstream.unpack(vaecodec.encode(im, 50)).side
    assert zlib.decompress(side[TAG_ICC]) == icc and len(side[TAG_ICC]) < len(icc)


def test_gray_profile_on_gray_image():
    gray = with_space(srgb_profile(), b"GRAY")
    im = natural_image(40, 24).convert("L")
    im.info["icc_profile"] = gray
    assert vaecodec.decode(vaecodec.encode(im, 50)).info["icc_profile"] == gray


@pytest.mark.parametrize("mode,space", [("CMYK", b"CMYK"), ("L", b"RGB "), ("RGB", b"GRAY")])
def test_profile_for_other_pixels_is_dropped(mode, space):
    """A CMYK profile would mis-colour the RGB pixels it becomes; no colour management here."""
    im = natural_image(40, 24).convert(mode)
    im.info["icc_profile"] = with_space(srgb_profile(), space)
    data = vaecodec.encode(im, 50)
    assert TAG_ICC not in bitstream.unpack(data).side
    assert "icc_profile" not in vaecodec.decode(data).info


def test_exif_and_xmp_are_stripped_by_default_and_kept_on_request(tmp_path):
    im = opened(png_with_metadata(tmp_path / "m.png"))
    assert im.info["xmp"] == XMP and im.info["exif"]

    plain = vaecodec.encode(im, 50)
    assert set(bitstream.unpack(plain).side) == {TAG_ICC}
    out = vaecodec.decode(plain)
    assert "exif" not in out.info and "xmp" not in out.info
    assert out.info["icc_profile"] == srgb_profile()

    kept = vaecodec.encode(im, 50, keep_metadata=True)
    assert set(bitstream.unpack(kept).side) == {TAG_ICC, TAG_EXIF, TAG_XMP}
    out = vaecodec.decode(kept)
    assert out.getexif()[0x010F] == "Test Camera Co." and out.getexif()[0x0110] == "Model 7"
    assert out.info["xmp"] == XMP
    assert len(kept) - len(plain) < len(exif_bytes()) + len(XMP)   # XMP is deflated


def test_exif_from_jpeg_keeps_its_tags():
    buf = io.BytesIO()
    natural_image(48, 32).save(buf, "JPEG", exif=exif_bytes())
    im = Image.open(io.BytesIO(buf.getvalue()))
    out = vaecodec.decode(vaecodec.encode(im, 50, keep_metadata=True))
    assert out.getexif()[0x010F] == "Test Camera Co."
    assert bitstream.unpack(vaecodec.encode(im, 50, keep_metadata=True)).side[TAG_EXIF][:4] \
        in (b"II*\x00", b"MM\x00*")


def test_cli_keeps_icc_always_and_exif_xmp_with_keep_metadata(tmp_path):
    src = png_with_metadata(tmp_path / "in.png")
    run = CliRunner().invoke
    assert run(main, ["encode", str(src), "-o", str(tmp_path / "a.vae"), "--quiet"]).exit_code == 0
    assert run(main, ["encode", str(src), "-o", str(tmp_path / "b.vae"), "--quiet",
                      "--keep-metadata"]).exit_code == 0
    for name in ("a", "b"):
        r = run(main, ["decode", str(tmp_path / f"{name}.vae"), "--quiet"])
        assert r.exit_code == 0, r.output
    a, b = opened(tmp_path / "a.png"), opened(tmp_path / "b.png")
    assert a.info["icc_profile"] == b.info["icc_profile"] == srgb_profile()
    assert "exif" not in a.info and "xmp" not in a.info
    assert b.getexif()[0x010F] == "Test Camera Co." and b.info["xmp"] == XMP
    info = run(main, ["info", str(tmp_path / "b.vae")]).output
    assert "side ICCP" in info and "side EXIF" in info and "side XMP" in info


def test_unknown_side_chunks_are_ignored():
    data = vaecodec.encode(natural_image(40, 24), 50)
    c = bitstream.unpack(data)
    c.side[b"ZZZZ"] = b"something a later version writes"
    out = vaecodec.decode(bitstream.pack(c))
    assert np.array_equal(np.asarray(out), np.asarray(vaecodec.decode(data)))


def hostile(side: dict, mode: str = "RGB") -> bytes:
    """A file with a valid CRC whose side chunks a buggy or hostile encoder wrote."""
    im = natural_image(40, 24).convert(mode)
    c = bitstream.unpack(vaecodec.encode(im, 50))
    c.side.update(side)
    return bitstream.pack(c)


@pytest.mark.parametrize("side,words", [
    ({TAG_ICC: zlib.compress(bytes(64 << 20))}, "inflates beyond 16 MiB"),
    ({TAG_XMP: zlib.compress(bytes(64 << 20))}, "inflates beyond 16 MiB"),
    ({TAG_ICC: b"not deflate"}, "does not inflate"),
    ({TAG_ICC: zlib.compress(srgb_profile())[:-10]}, "truncated"),
    ({TAG_ICC: zlib.compress(b"x" * 300)}, "ICC profile is not one for RGB"),
    ({TAG_ICC: zlib.compress(with_space(srgb_profile(), b"GRAY"))}, "not one for RGB"),
    ({TAG_EXIF: b"Exif\x00\x00junk"}, "EXIF chunk is not TIFF"),
    ({TAG_XMP: zlib.compress(b"\xff\xfe<x/>")}, "XMP packet is not UTF-8"),
])
def test_hostile_metadata_chunks_are_format_errors(side, words):
    with pytest.raises(FormatError, match=words):
        vaecodec.decode(hostile(side))


def test_repeated_side_chunk_is_an_error():
    data = hostile({b"ZZZZ": b"1"})
    body = data[:-4]
    dup = body.replace(b"ZZZZ\x00\x00\x00\x011", b"ZZZZ\x00\x00\x00\x011ZZZZ\x00\x00\x00\x012")
    count_at = dup.index(b"ZZZZ") - 1
    dup = dup[:count_at] + bytes([dup[count_at] + 1]) + dup[count_at + 1:]
    with pytest.raises(FormatError, match="appears twice"):
        bitstream.unpack(dup + zlib.crc32(dup).to_bytes(4, "big"))


def test_pack_refuses_a_chunk_over_4_gib():
    class Huge(bytes):
        def __len__(self):
            return 1 << 32

    c = bitstream.unpack(vaecodec.encode(natural_image(16, 16), 50))
    c.side[TAG_XMP] = Huge(b"x")
    with pytest.raises(FormatError, match="exceeds 4 GiB"):
        bitstream.pack(c)

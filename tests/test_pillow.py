"""The Pillow plugin: Image.open / Image.save of .vae files, with the API's errors."""

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

import vaecodec
import vaecodec.pillow  # noqa: F401  (registers the format)
from vaecodec.errors import FormatError, InputImageError, VaecodecError

from conftest import natural_image, psnr


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("pillow") / "a.vae"
    p.write_bytes(vaecodec.encode(natural_image(96, 64), 60))
    return p


def test_format_is_registered():
    assert Image.registered_extensions()[".vae"] == "VAE"
    assert Image.MIME["VAE"] == vaecodec.pillow.MIME
    assert "VAE" in Image.OPEN and "VAE" in Image.SAVE


def test_open_reads_the_header_and_load_decodes_like_the_api(vae_file):
    im = Image.open(vae_file)
    assert (im.format, im.size, im.mode) == ("VAE", (96, 64), "RGB")
    assert im.tile                                        # not decoded yet
    im.load()
    assert not im.tile
    want = vaecodec.decode(vae_file.read_bytes())
    assert np.array_equal(np.asarray(im), np.asarray(want))
    with Image.open(io.BytesIO(vae_file.read_bytes())) as again:   # file objects too
        assert np.array_equal(np.asarray(again.convert("RGB")), np.asarray(want))


def test_open_does_not_import_torch(vae_file):
    code = ("import sys, vaecodec.pillow\nfrom PIL import Image\n"
            "im = Image.open(sys.argv[1])\nassert im.size == (96, 64)\n"
            "assert 'torch' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code, str(vae_file)], capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr.decode()


def test_save_encodes_with_the_api_parameters(tmp_path):
    src = natural_image(96, 64)
    src.save(tmp_path / "q.vae", quality=30)
    assert vaecodec.read_header((tmp_path / "q.vae").read_bytes()).quality == 30
    assert (tmp_path / "q.vae").read_bytes() == vaecodec.encode(src, 30)
    src.save(tmp_path / "s.vae", size=900)
    assert (tmp_path / "s.vae").stat().st_size <= 900
    buf = io.BytesIO()
    src.save(buf, format="VAE", quality=80, optimize=True)    # unknown Pillow params ignored
    back = Image.open(io.BytesIO(buf.getvalue()))
    assert back.size == src.size and psnr(back, src) > 28


def test_rgba_and_metadata_round_trip(tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = natural_image(48, 32).convert("RGBA")
    src.putalpha(77)
    src.info["icc_profile"] = icc
    src.save(tmp_path / "a.vae")
    im = Image.open(tmp_path / "a.vae")
    assert im.mode == "RGBA" and im.info["icc_profile"] == icc        # before decoding
    assert np.asarray(im)[..., 3].min() == np.asarray(im)[..., 3].max() == 77


def test_errors_are_the_apis(tmp_path, vae_file):
    data = vae_file.read_bytes()
    (tmp_path / "cut.vae").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="truncated"):
        Image.open(tmp_path / "cut.vae")
    (tmp_path / "other.vae").write_bytes(b"GIF89a" + bytes(40))    # not ours: Pillow's error
    with pytest.raises(UnidentifiedImageError):
        Image.open(tmp_path / "other.vae")
    with pytest.raises(VaecodecError, match="cannot fit in 10 bytes"):
        natural_image(96, 64).save(tmp_path / "tiny.vae", size=10)
    assert not (tmp_path / "tiny.vae").exists()                   # no file left behind
    first, *rest = [Image.new("RGB", (16, 16), c) for c in ("red", "lime", "blue")]
    first.save(tmp_path / "anim.gif", save_all=True, append_images=rest)
    with Image.open(tmp_path / "anim.gif") as gif:
        with pytest.raises(InputImageError, match="3 frames"):
            gif.save(tmp_path / "anim.vae")
        gif.save(tmp_path / "anim.vae", frame=1)
    r, g, b = np.asarray(Image.open(tmp_path / "anim.vae"), float).mean(axis=(0, 1))
    assert g > 200 and r < 60 and b < 60                          # frame 1 is lime
    with pytest.raises(VaecodecError, match="one image"):
        first.save(tmp_path / "all.vae", save_all=True, append_images=rest)

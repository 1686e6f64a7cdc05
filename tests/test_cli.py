"""The command line, end to end: real processes for stdin/stdout and error output."""

import struct
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import vaecodec
from vaecodec.cli import main

from conftest import natural_image, psnr, run_cli


@pytest.fixture
def png(tmp_path):
    p = tmp_path / "in.png"
    natural_image(150, 100).save(p)
    return p


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_clean_error(proc, *words):
    """Exit code 1, one line on stderr naming the problem, no traceback."""
    err = proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr
    assert proc.returncode == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("vaecodec: error:")
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]


def test_encode_decode_files_with_default_names(png, tmp_path):
    r = run_cli("encode", png, "-q", "60", "--print-psnr")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "bpp" in out and "PSNR" in out and "quality 60" in out
    vae = tmp_path / "in.vae"
    assert vae.read_bytes()[:4] == b"\x89VAE"
    png.unlink()
    r = run_cli("decode", vae)
    assert r.returncode == 0, r.stderr
    dec = Image.open(tmp_path / "in.png")
    assert dec.size == (150, 100) and dec.mode == "RGB"
    assert psnr(natural_image(150, 100), dec) > 25


def test_stdin_to_stdout_both_ways(png):
    r = run_cli("encode", "-", "-o", "-", "-q", "40", input=png.read_bytes())
    assert r.returncode == 0, r.stderr
    assert r.stdout[:4] == b"\x89VAE"
    assert b"bpp" in r.stderr          # the report goes to stderr when stdout carries data
    d = run_cli("decode", "-", "-o", "-", input=r.stdout)
    assert d.returncode == 0, d.stderr
    assert d.stdout[:8] == b"\x89PNG\r\n\x1a\n"


def test_info_prints_the_header(png, tmp_path):
    out = tmp_path / "x.vae"
    assert invoke("encode", png, "-o", out, "-q", "55.5", "--quiet").output == ""
    r = invoke("info", out)
    assert r.exit_code == 0
    for s in ("150x100", "RGB", "55.5", "vaecodec-groups-vr", "bpp", str(out.stat().st_size)):
        assert s in r.output


def test_version_and_help():
    assert vaecodec.__version__ in invoke("--version").output
    h = invoke("--help").output
    assert "encode" in h and "Examples" in h
    assert "vaecodec encode photo.png" in invoke("encode", "--help").output


def test_usage_errors_exit_2(png):
    r = CliRunner().invoke(main, ["encode", str(png), "-q", "150"])
    assert r.exit_code == 2
    assert CliRunner().invoke(main, ["frobnicate"]).exit_code == 2


def test_missing_file(tmp_path):
    assert_clean_error(run_cli("encode", tmp_path / "nope.png"), "no such file")
    assert_clean_error(run_cli("decode", tmp_path / "nope.vae"), "nope.vae")


def test_non_image_input(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n")
    assert_clean_error(run_cli("encode", p), "cannot read")
    assert not (tmp_path / "notes.vae").exists()


def test_decode_errors_leave_existing_output_untouched(png, tmp_path):
    good = tmp_path / "good.vae"
    invoke("encode", png, "-o", good, "--quiet")
    data = good.read_bytes()
    target = tmp_path / "out.png"
    target.write_bytes(b"precious")
    cases = {
        "wrong magic": (b"GIF89a" + data[6:], "not a .vae file"),
        "truncated": (data[: len(data) // 2], "truncated"),
        "bit flip": (data[:40] + bytes([data[40] ^ 1]) + data[41:], "checksum"),
        "empty": (b"", "not a .vae file"),
    }
    for name, (bad, words) in cases.items():
        f = tmp_path / f"{name}.vae"
        f.write_bytes(bad)
        r = run_cli("decode", f, "-o", target)
        assert_clean_error(r, words)
        assert target.read_bytes() == b"precious", name
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_absurd_dimensions(png, tmp_path):
    good = tmp_path / "good.vae"
    invoke("encode", png, "-o", good, "--quiet")
    b = bytearray(good.read_bytes())
    struct.pack_into(">II", b, 16, 100000, 100000)
    b[-4:] = struct.pack(">I", zlib.crc32(bytes(b[:-4])))
    f = tmp_path / "huge.vae"
    f.write_bytes(bytes(b))
    assert_clean_error(run_cli("decode", f), "100000x100000")
    assert_clean_error(run_cli("info", f), "100000x100000")


def test_wrong_weights_file(tmp_path, png):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"\x00" * 100)
    assert_clean_error(run_cli("encode", png, "--model", bogus), "weights")


def test_output_directory_missing(png, tmp_path):
    assert_clean_error(run_cli("encode", png, "-o", tmp_path / "no" / "dir" / "x.vae"))


def test_write_is_atomic_on_interrupt(tmp_path, monkeypatch):
    from vaecodec import image

    target = tmp_path / "x.png"
    target.write_bytes(b"old")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(image.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        image.write_atomic(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_rgba_through_cli_keeps_alpha(tmp_path):
    im = natural_image(60, 40).convert("RGBA")
    a = (np.arange(60 * 40) % 256).astype(np.uint8).reshape(40, 60)
    im.putalpha(Image.fromarray(a))
    im.save(tmp_path / "a.png")
    assert invoke("encode", tmp_path / "a.png", "--quiet").exit_code == 0
    assert invoke("decode", tmp_path / "a.vae", "-o", tmp_path / "b.png", "--quiet").exit_code == 0
    out = Image.open(tmp_path / "b.png")
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out.getchannel("A")), a)


# -- tools people already use: info --json, output formats, frames, orientation ----------------


def test_info_json_for_scripts(png, tmp_path):
    import json

    out = tmp_path / "x.vae"
    assert invoke("encode", png, "-o", out, "-q", "40", "--quiet").exit_code == 0
    doc = json.loads(invoke("info", out, "--json").output)
    size = out.stat().st_size
    assert (doc["width"], doc["height"], doc["mode"], doc["quality"]) == (150, 100, "RGB", 40.0)
    assert doc["model_id"] == "vaecodec-groups-vr" and len(doc["model_hash"]) == 16
    assert doc["bytes"] == size and doc["bpp"] == pytest.approx(8 * size / (150 * 100))
    assert doc["y_bytes"] + doc["z_bytes"] + doc["side_bytes"] < size
    assert doc["z_shape"] == [2, 3] and doc["y_shape"] == [8, 12]


def test_help_and_info_do_not_import_torch(png, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "x.vae"
    assert invoke("encode", png, "-o", out, "--quiet").exit_code == 0
    code = ("import sys\nfrom vaecodec.cli import main\n"
            "for args in (['--help'], ['encode', '--help'], ['info', sys.argv[1]],"
            " ['info', sys.argv[1], '--json']):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n"
            "        assert not e.code, (args, e.code)\n"
            "heavy = [m for m in ('torch', 'numpy', 'compressai', 'tqdm') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()


@pytest.fixture(scope="module")
def decoded_ref(tmp_path_factory):
    """One RGBA .vae with an ICC profile, and its pixels as decoded to PNG."""
    from PIL import ImageCms

    d = tmp_path_factory.mktemp("formats")
    im = natural_image(64, 40).convert("RGBA")
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = d / "rgb.png"
    im.convert("RGB").save(rgb, icc_profile=icc)
    im.putalpha(128)
    im.save(d / "rgba.png")
    for name in ("rgb", "rgba"):
        assert invoke("encode", d / f"{name}.png", "--quiet").exit_code == 0
        assert invoke("decode", d / f"{name}.vae", "-o", d / f"{name}-ref.png",
                      "--quiet").exit_code == 0
    return d, icc


@pytest.mark.parametrize("ext,fmt", [(".tif", "TIFF"), (".tiff", "TIFF"), (".bmp", "BMP"),
                                     (".ppm", "PPM"), (".webp", "WEBP"), (".png", "PNG")])
def test_decode_writes_the_format_the_extension_names(decoded_ref, ext, fmt):
    d, icc = decoded_ref
    out = d / f"out{ext}"
    r = invoke("decode", d / "rgb.vae", "-o", out)
    assert r.exit_code == 0, r.output
    got = Image.open(out)
    assert got.format == fmt
    ref = np.asarray(Image.open(d / "rgb-ref.png").convert("RGB"))
    assert np.array_equal(np.asarray(got.convert("RGB")), ref)           # lossless, always
    if fmt in ("TIFF", "WEBP", "PNG"):
        assert got.info.get("icc_profile") == icc


def test_decode_format_errors_are_one_line_and_leave_no_file(decoded_ref, tmp_path):
    d, _ = decoded_ref
    r = run_cli("decode", d / "rgb.vae", "-o", tmp_path / "out.jpg")
    assert_clean_error(r, ".jpg", ".tif", ".webp")
    r = run_cli("decode", d / "rgba.vae", "-o", tmp_path / "out.ppm")
    assert_clean_error(r, "no alpha channel", "RGBA")
    assert list(tmp_path.iterdir()) == []
    r = invoke("decode", d / "rgba.vae", "-o", tmp_path / "out.webp", "--quiet")
    assert r.exit_code == 0 and Image.open(tmp_path / "out.webp").mode == "RGBA"
    assert invoke("decode", d / "rgb.vae", "-o", tmp_path / "x.tif", "-f", "png").exit_code == 2


def test_decode_format_option_for_stdout_and_batches(decoded_ref, tmp_path):
    d, _ = decoded_ref
    r = run_cli("decode", d / "rgb.vae", "-o", "-", "--format", "tif")
    assert r.returncode == 0 and r.stdout[:4] in (b"II*\x00", b"MM\x00*")
    r = invoke("decode", d / "rgb.vae", d / "rgba.vae", "-o", tmp_path / "out", "-f", "webp",
               "--quiet")
    assert r.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rgb.webp", "rgba.webp"]


def test_encode_applies_exif_orientation(tmp_path):
    from PIL import ImageOps

    a = np.zeros((48, 96, 3), np.uint8)
    a[:, :48], a[:, 48:], a[:12] = (220, 30, 30), (30, 30, 220), (30, 200, 30)
    exif = Image.Exif()
    exif[0x0112] = 6                             # "rotate 90 degrees clockwise to display"
    exif[0x010F] = "Test Camera Co."
    Image.fromarray(a).save(tmp_path / "cam.jpg", quality=95, exif=exif.tobytes())
    r = invoke("encode", tmp_path / "cam.jpg", "--keep-metadata", "-q", "90")
    assert r.exit_code == 0 and "48x96" in r.output
    assert invoke("decode", tmp_path / "cam.vae", "--quiet").exit_code == 0
    out = Image.open(tmp_path / "cam.png")
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "cam.jpg"))
    assert out.size == upright.size == (48, 96)
    other = upright.transpose(Image.Transpose.ROTATE_180)          # same size, wrong way up
    assert psnr(out, upright) > 25 and psnr(out, upright) > psnr(out, other) + 15
    kept = out.getexif()
    assert kept[0x0112] == 1 and kept[0x010F] == "Test Camera Co."


def test_multi_frame_input_is_refused_or_one_frame_picked(tmp_path):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    first, *rest = [Image.new("RGB", (64, 48), c) for c in colours]
    first.save(tmp_path / "anim.gif", save_all=True, append_images=rest, duration=100)
    assert_clean_error(run_cli("encode", tmp_path / "anim.gif"), "anim.gif", "3 frames",
                       "--frame")
    assert not (tmp_path / "anim.vae").exists()
    r = invoke("encode", tmp_path / "anim.gif", "--frame", "2", "-q", "80")
    assert r.exit_code == 0 and "frame 2" in r.output
    got = np.asarray(vaecodec.decode((tmp_path / "anim.vae").read_bytes()), float)
    assert np.abs(got.mean(axis=(0, 1)) - colours[2]).max() < 6
    r = run_cli("encode", tmp_path / "anim.gif", "--frame", "3")
    assert_clean_error(r, "no frame 3")

"""--fast (bfloat16 transforms): any decoder reads the file, and the image stays close."""

import numpy as np
from PIL import Image

import vaecodec
from conftest import natural_image, psnr, run_cli


def test_fast_encode_decodes_exactly_and_costs_little(kodim):
    im = kodim(15)
    exact = vaecodec.encode(im, 50)
    fast = vaecodec.encode(im, 50, fast=True)
    assert vaecodec.read_header(fast).quality == vaecodec.read_header(exact).quality
    p_exact, p_fast = psnr(im, vaecodec.decode(exact)), psnr(im, vaecodec.decode(fast))
    # the file is an ordinary file: rate and quality within a fraction of a percent / 0.05 dB
    assert abs(len(fast) - len(exact)) <= 0.01 * len(exact)
    assert abs(p_fast - p_exact) <= 0.05


def test_fast_decode_is_within_about_a_level(kodim):
    im = kodim(15)
    data = vaecodec.encode(im, 90)
    exact = np.asarray(vaecodec.decode(data), dtype=np.int16)
    fast = np.asarray(vaecodec.decode(data, fast=True), dtype=np.int16)
    diff = np.abs(exact - fast)
    assert diff.mean() < 0.5 and np.percentile(diff, 99.9) <= 4
    assert abs(psnr(im, vaecodec.decode(data, fast=True)) - psnr(im, vaecodec.decode(data))) < 0.1


def test_cli_fast_flags(tmp_path):
    src = tmp_path / "a.png"
    natural_image(200, 136).save(src)
    r = run_cli("encode", src, "-o", tmp_path / "a.vae", "--fast", "-q", "40")
    assert r.returncode == 0, r.stderr
    r = run_cli("decode", tmp_path / "a.vae", "-o", tmp_path / "b.png", "--fast")
    assert r.returncode == 0, r.stderr
    r = run_cli("decode", tmp_path / "a.vae", "-o", tmp_path / "c.png")
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "b.png") as b, Image.open(tmp_path / "c.png") as c:
        assert b.size == c.size == (200, 136)
        assert psnr(b, c) > 40


def test_fast_without_bf16_hardware_is_the_exact_coder(kodim, monkeypatch):
    """A CPU that would emulate bfloat16 (AVX2 only: ~90x slower than float32) runs --fast
    in float32, so it gives the exact coder's bytes and pixels rather than a slow crawl."""
    from vaecodec import fastpath

    monkeypatch.setattr(fastpath, "bf16_is_fast", lambda dev: False)
    im = kodim(15).crop((0, 0, 256, 192))
    data = vaecodec.encode(im, 50)
    assert vaecodec.encode(im, 50, fast=True) == data
    assert vaecodec.decode(data, fast=True).tobytes() == vaecodec.decode(data).tobytes()


def test_bf16_is_fast_answers_for_this_machine():
    from vaecodec.fastpath import bf16_is_fast

    assert bf16_is_fast("cpu") in (True, False)

"""--fast (bfloat16 transforms): any decoder reads the file, and the image stays close.

What --fast does depends on the CPU: with bfloat16 dot products (AVX512-BF16, AMX) it runs
the transforms in bfloat16, and the tests below check that it did (other bytes and pixels
than float32) and what that costs; on a CPU that would emulate them (AVX2 only) it runs
float32, and the tests check that it is then exactly the exact coder."""

import numpy as np
import pytest
from PIL import Image

import vaecodec
from vaecodec.fastpath import bf16_is_fast
from conftest import natural_image, psnr, run_cli

BF16 = bf16_is_fast("cpu")
needs_bf16 = pytest.mark.skipif(
    not BF16, reason="this CPU has no fast bfloat16 (AVX2 only), so --fast runs float32 here: "
                     "test_fast_without_bf16_hardware_is_the_exact_coder checks that instead")


@needs_bf16
def test_fast_encode_decodes_exactly_and_costs_little(kodim):
    im = kodim(15)
    exact = vaecodec.encode(im, 50)
    fast = vaecodec.encode(im, 50, fast=True)
    assert fast != exact, "--fast gave the float32 file: the analysis did not run in bfloat16"
    assert vaecodec.read_header(fast).quality == vaecodec.read_header(exact).quality
    p_exact, p_fast = psnr(im, vaecodec.decode(exact)), psnr(im, vaecodec.decode(fast))
    # the file is an ordinary file: rate and quality within a fraction of a percent / 0.05 dB
    assert abs(len(fast) - len(exact)) <= 0.01 * len(exact)
    assert abs(p_fast - p_exact) <= 0.05


@needs_bf16
def test_fast_decode_is_within_about_a_level(kodim):
    im = kodim(15)
    data = vaecodec.encode(im, 90)
    exact = np.asarray(vaecodec.decode(data), dtype=np.int16)
    fast = np.asarray(vaecodec.decode(data, fast=True), dtype=np.int16)
    diff = np.abs(exact - fast)
    assert diff.max() > 0, "--fast gave the float32 pixels: the synthesis did not run in bfloat16"
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
        if BF16:
            assert psnr(b, c) > 40
        else:
            assert b.tobytes() == c.tobytes()


def test_fast_without_bf16_hardware_is_the_exact_coder(kodim, monkeypatch):
    """A CPU that would emulate bfloat16 (AVX2 only: ~90x slower than float32) runs --fast
    in float32, so it gives the exact coder's bytes and pixels rather than a slow crawl. On
    such a CPU this is the real machine's answer; elsewhere the answer is overridden."""
    from vaecodec import fastpath

    if BF16:
        monkeypatch.setattr(fastpath, "bf16_is_fast", lambda dev: False)
    im = kodim(15).crop((0, 0, 256, 192))
    data = vaecodec.encode(im, 50)
    assert vaecodec.encode(im, 50, fast=True) == data
    assert vaecodec.decode(data, fast=True).tobytes() == vaecodec.decode(data).tobytes()


def test_bf16_is_fast_answers_for_this_machine():
    assert BF16 in (True, False)

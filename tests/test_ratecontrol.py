"""Rate control: --size / --target-bpp / --target-psnr, on real photos with the shipped weights."""

import math
from pathlib import Path

import numpy as np
import pytest

import vaecodec
from vaecodec import ratecontrol
from vaecodec.metrics import psnr as psnr_u8

from conftest import kodak_photo, run_cli


@pytest.mark.parametrize("n,bpp", [(1, 0.5), (23, 0.3), (5, 1.0)])
def test_size_target_never_exceeded_and_close(kodim, n, bpp):
    im = kodim(n)
    limit = int(bpp * im.width * im.height / 8)
    data = vaecodec.encode(im, size=limit)
    assert (1 - 0.03) * limit <= len(data) <= limit
    out = vaecodec.decode(data)
    assert out.size == im.size
    assert 0.0 <= vaecodec.read_header(data).quality <= 100.0


def test_bpp_target_is_the_size_target(kodim):
    im = kodim(23)
    a = vaecodec.encode(im, bpp=0.4)
    b = vaecodec.encode(im, size=int(0.4 * im.width * im.height / 8))
    assert a == b


@pytest.mark.parametrize("n,target", [(1, 28.0), (23, 34.0)])
def test_psnr_target_lands_within_0_2_db(kodim, n, target):
    im = kodim(n)
    data = vaecodec.encode(im, psnr=target)
    got = psnr_u8(np.asarray(im), np.asarray(vaecodec.decode(data)))
    assert abs(got - target) <= 0.2


def test_impossible_size_is_an_error_that_says_the_smallest(kodim):
    with pytest.raises(vaecodec.VaecodecError, match=r"cannot fit in 500 bytes.*quality 0"):
        vaecodec.encode(kodim(1), size=500)


def test_unreachable_psnr_gives_the_best_quality(kodim):
    data = vaecodec.encode(kodim(1), psnr=80.0)
    assert vaecodec.read_header(data).quality == 100.0


def test_one_target_only(kodim):
    with pytest.raises(vaecodec.VaecodecError, match="one of"):
        vaecodec.encode(kodim(1), 50, size=10000)


def test_search_uses_few_tries_on_a_smooth_curve():
    """log size linear in quality, like the codec's: the secant lands in a few tries."""
    calls = []

    def code(q):
        calls.append(q)
        return int(math.exp(9.5 + 0.02 * q))

    s = ratecontrol.fit_size(code, lambda r: r, 40000)
    assert 0.985 * 40000 <= s.value <= 40000
    assert len(calls) <= 4


def test_search_survives_a_flat_and_jumpy_curve():
    """A size that is a step function of quality still never exceeds the limit."""
    s = ratecontrol.fit_size(lambda q: 1000 * (1 + int(q // 10)), lambda r: r, 5500)
    assert s.value == 5000


@pytest.fixture
def photo7() -> Path:
    path = kodak_photo(7)
    if path is None:
        pytest.skip("kodim07 is neither in ../shared/data/kodak nor in tests/data")
    return path


def test_cli_size_and_reported_quality(photo7, tmp_path):
    out = tmp_path / "a.vae"
    r = run_cli("encode", photo7, "-o", out, "--size", "30k")
    assert r.returncode == 0, r.stderr
    assert 0.97 * 30000 <= out.stat().st_size <= 30000
    q = vaecodec.read_header(out.read_bytes()).quality
    assert f"quality {q:.4g} (chosen for --size 30000)" in r.stdout.decode()


@pytest.mark.parametrize("args,msg", [
    (["-q", "50", "--size", "10k"], "alternatives"),
    (["--size", "ten"], "is not a size"),
    (["--target-psnr", "-3"], "target-psnr"),
])
def test_cli_bad_targets_are_usage_errors(photo7, tmp_path, args, msg):
    out = tmp_path / "a.vae"
    r = run_cli("encode", photo7, "-o", out, *args)
    assert r.returncode == 2 and msg in r.stderr.decode()
    assert not out.exists()


def test_cli_impossible_size_fails_without_output(photo7, tmp_path):
    out = tmp_path / "a.vae"
    r = run_cli("encode", photo7, "-o", out, "--size", "100")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "cannot fit in 100 bytes" in err
    assert not out.exists()

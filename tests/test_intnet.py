"""The integer hyper-synthesis computed by int8 limb GEMMs is the float64 definition to the
bit, for any input the decoder can meet, and the codec falls back to float64 where int8 GEMMs
cannot be trusted."""

import numpy as np
import pytest
import torch

import vaecodec
from vaecodec import intnet, weights
from vaecodec.intnet import ACT_LIMIT, IntegerHyperSynthesis, limbs


@pytest.fixture(scope="module")
def layers():
    return IntegerHyperSynthesis(weights.load(None).model.h_s).layers


@pytest.mark.parametrize("scale", [1, 300, 3e4, 1e6, 1e9])
def test_limbs_reassemble_and_stay_within_seven_bits(scale):
    torch.manual_seed(0)
    x = torch.round(torch.randn(4000, dtype=torch.float64) * scale).clamp(-ACT_LIMIT, ACT_LIMIT)
    x[:4] = torch.tensor([ACT_LIMIT, -ACT_LIMIT, 0, -1])
    d = limbs(x)
    assert all(int(v.min()) >= -64 and int(v.max()) <= 63 for v in d)
    back = sum(v.long() << (7 * i) for i, v in enumerate(d))
    assert torch.equal(back, x.long())
    assert len(d) <= 4


def test_every_layer_takes_the_gemm_path(layers):
    assert intnet._exact_int8_gemm(), "this torch's int8 GEMM failed the exactness check"
    assert all(layer.gemm.usable for layer in layers)


def test_speed_choice_never_overrides_exactness(monkeypatch):
    intnet._int8_gemm_pays.cache_clear()
    monkeypatch.setattr(intnet, "_exact_int8_gemm", lambda: False)
    try:
        assert not intnet._int8_gemm_pays()
    finally:
        intnet._int8_gemm_pays.cache_clear()


@pytest.mark.parametrize("scale", [3, 4096, 3e5, 1e9])
@pytest.mark.parametrize("shape", [(1, 8, 12), (3, 5), (1, 1), (13, 18)])
def test_gemm_equals_float64_convolution_bit_for_bit(layers, scale, shape):
    """Activations from tiny to the clamp limit (1e9 saturates every value at +-2^24)."""
    torch.manual_seed(int(scale) % 1000 + shape[-1])
    h = torch.round(torch.randn(1, 128, *shape[-2:], dtype=torch.float64) * scale)
    h = h.clamp(-ACT_LIMIT, ACT_LIMIT)
    for layer in layers:
        assert torch.equal(layer.gemm(h), layer.reference(h))
        h = torch.round(torch.randn_like(layer(h)) * scale).clamp(-ACT_LIMIT, ACT_LIMIT)


def test_float64_fallback_gives_the_same_file(kodim, monkeypatch):
    """Where the int8 GEMM is not exact (or missing), float64 computes the same sums."""
    im = kodim(7)
    data = vaecodec.encode(im, 60)
    pixels = np.asarray(vaecodec.decode(data))
    for f in (intnet._exact_int8_gemm, intnet._int8_gemm_pays):
        f.cache_clear()
    monkeypatch.delattr(torch, "_int_mm")
    try:
        assert not intnet._int8_gemm_pays()
        assert vaecodec.encode(im, 60) == data
        assert np.array_equal(np.asarray(vaecodec.decode(data)), pixels)
    finally:
        for f in (intnet._exact_int8_gemm, intnet._int8_gemm_pays):
            f.cache_clear()


def test_saturating_int8_gemm_is_detected(monkeypatch):
    """An int8 kernel that saturates pair sums in int16 (as vpmaddubsw does) would break
    exactness for larger operands; the check must catch one that is wrong anywhere."""
    real = torch._int_mm

    def off_by_one(a, b):
        out = real(a, b)
        out[0, 0] += 1
        return out

    intnet._exact_int8_gemm.cache_clear()
    monkeypatch.setattr(torch, "_int_mm", off_by_one)
    try:
        assert not intnet._exact_int8_gemm()
    finally:
        intnet._exact_int8_gemm.cache_clear()


def test_cpu_flags_decide_without_probes(monkeypatch):
    """Where /proc/cpuinfo says whether int8 dot products exist, the choice needs no timing
    race, and without them not even the exactness probe (the cold start pays for neither)."""
    def probe():
        raise AssertionError("probed")

    intnet._int8_gemm_pays.cache_clear()
    try:
        monkeypatch.setattr(intnet, "_cpu_has_vnni", lambda: False)
        monkeypatch.setattr(intnet, "_exact_int8_gemm", probe)
        assert not intnet._int8_gemm_pays()
        intnet._int8_gemm_pays.cache_clear()
        monkeypatch.setattr(intnet, "_cpu_has_vnni", lambda: True)
        monkeypatch.setattr(intnet, "_exact_int8_gemm", lambda: True)
        assert intnet._int8_gemm_pays()
    finally:
        intnet._int8_gemm_pays.cache_clear()


def test_cpu_flags_are_read_here():
    import platform

    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("reads /proc/cpuinfo's x86 flags")
    assert intnet._cpu_has_vnni() in (True, False)

"""Encoder search (--effort): ordinary files, never worse than no search, better on photos."""

import numpy as np
import pytest
import torch

import vaecodec
from vaecodec import codec, fastpath, refine, weights
from conftest import natural_image, psnr, rd_cost, run_cli

#: The 1.0 hyperprior weights: the search prices bits with one pass of fixed params there.
V1 = weights.find_by_hash(bytes.fromhex("47ee00b1d1cbe06d"))


def _searched_cost(im, quality, iterations, model=None):
    """The real rate-distortion cost of the plain file and of the search's own file (before
    the encoder's keep-the-better rule, so that the search itself is judged)."""
    loaded = weights.load(model)
    rgb = np.asarray(im.convert("RGB"))
    a = codec.analyze_pixels(rgb, loaded)
    level = codec.quality_to_level(quality, loaded.model.levels)
    lam = loaded.model.lambda_for(level)
    plain, y_plain = codec.code_at(a, quality, loaded)
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None]
    y, z = refine.refine(loaded.model, a.y, a.z, x, level, iterations)
    searched, y_s = codec._code_latent(a, y, plain.header.quality, level, loaded, True, False,
                                       z=z)
    return (codec._rd_cost(a, plain, y_plain, loaded, lam),
            codec._rd_cost(a, searched, y_s, loaded, lam), y, a)


@pytest.mark.parametrize("quality", [15, 60])
def test_search_prices_bits_as_the_context_codes_them_and_lowers_the_real_cost(kodim, quality):
    """With the default channel-group model the search's own file (not the fallback) costs
    less than the plain one: bits priced through the context are bits the coder saves. On
    this crop effort 2's 80 iterations gave -2.0% at quality 15 and -4.5% at 60 (bfloat16
    g_s, AVX-512 EPYC); the margin asked is 1%."""
    im = kodim(23).crop((256, 128, 512, 384))
    assert weights.load().model.LATENT_CODEC == "groups"
    plain, searched, _, _ = _searched_cost(im, quality, 80)
    assert searched < 0.99 * plain, (plain, searched)


def test_search_lowers_the_real_cost_of_a_photo_and_the_file_is_ordinary(kodim):
    im = kodim(23).crop((256, 128, 512, 384))
    plain = vaecodec.encode(im, 50)
    searched = vaecodec.encode(im, 50, effort=2)
    h0, h1 = vaecodec.read_header(plain), vaecodec.read_header(searched)
    assert (h1.quality, h1.width, h1.height, h1.model_hash) == (
        h0.quality, h0.width, h0.height, h0.model_hash)
    assert searched != plain
    # a plain decoder reads it, and the rate-distortion cost went down by a real margin
    assert rd_cost(im, searched) < 0.99 * rd_cost(im, plain)
    assert psnr(im, vaecodec.decode(searched)) > 20


def test_search_is_reproducible():
    im = natural_image(128, 96)
    assert vaecodec.encode(im, 30, effort=1) == vaecodec.encode(im, 30, effort=1)


def test_search_never_keeps_a_worse_result(monkeypatch):
    """A search that makes things worse (here: it returns a badly shifted latent) is thrown
    away: the file is the plain one."""
    im = natural_image(128, 96)

    def harmful(model, y, z, x, level, iterations, **kw):
        return y + 3.0, z

    monkeypatch.setattr(refine, "refine", harmful)
    assert vaecodec.encode(im, 40, effort=1) == vaecodec.encode(im, 40)


def test_search_never_makes_a_context_file_worse(kodim):
    im = kodim(23).crop((256, 128, 512, 384))
    plain = vaecodec.encode(im, 50)
    assert vaecodec.read_header(plain).latent_codec == "groups"
    assert rd_cost(im, vaecodec.encode(im, 50, effort=1)) <= rd_cost(im, plain) + 1e-9


@pytest.mark.parametrize("model", [None, V1], ids=["groups", "hyperprior"])
def test_tiled_search_covers_every_tile_and_lowers_the_cost(monkeypatch, kodim, model):
    """Big images are searched tile by tile (memory stays bounded): with 4-latent tiles a
    128 x 96 image has 6 tiles, every one of them moves, and the whole image's cost falls,
    on every CPU kind (g_s runs in bfloat16 where that is fast, float32 elsewhere)."""
    monkeypatch.setattr(refine, "TILE", 4)
    im = kodim(23).crop((320, 192, 448, 288))
    plain, searched, y, a = _searched_cost(im, 50, 40, model)
    moved = (y - a.y).abs().amax(dim=1)[0]  # latent grid 6 x 8
    for t in range(0, 6, 4):
        for s in range(0, 8, 4):
            assert moved[t:t + 4, s:s + 4].max() > 0
    assert searched < plain, (plain, searched)


@pytest.mark.parametrize("anneal", [False, True], ids=["ste", "sga"])
def test_z_search_moves_z_and_the_file_carries_it(monkeypatch, kodim, anneal):
    """With search_z, z's symbols move, and the file codes the searched z with y's symbols
    found under it: the decoder (symbols CRC checked) gives the encoder's own pixels. An
    image of more than one search tile keeps the analysis's z."""
    monkeypatch.setattr(refine, "LR_Z", 0.3)       # large enough that z surely moves
    monkeypatch.setattr(refine, "Z_ANNEAL", anneal)
    loaded = weights.load()
    rgb = np.asarray(kodim(23).crop((256, 128, 384, 256)))
    a = codec.analyze_pixels(rgb, loaded)
    level = codec.quality_to_level(50, loaded.model.levels)
    plain, _ = codec.code_at(a, 50, loaded)
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None]
    y, z = refine.refine(loaded.model, a.y, a.z, x, level, 20, search_z=True)
    coded, y_hat = codec._code_latent(a, y, plain.header.quality, level, loaded, True, False,
                                      z=z)
    assert coded.z_string != plain.z_string
    assert np.array_equal(codec.decode_pixels(coded, loaded), codec.reconstruct(a, y_hat, loaded))
    monkeypatch.setattr(refine, "TILE", 4)
    assert refine.refine(loaded.model, a.y, a.z, x, level, 2, search_z=True)[1] is a.z


def test_searched_file_decodes_identically_under_other_numerics(kodim, tmp_path):
    """A searched file is an ordinary one: decoded in another process with one thread, no
    AVX (oneDNN SSE4.1, ATen's default kernels), the symbols CRC holds and the pixels are
    the encoder's."""
    from test_determinism import OTHER_NUMERICS, worker

    im = kodim(23).crop((256, 128, 448, 256))
    (tmp_path / "ref").mkdir()
    (tmp_path / "out").mkdir()
    im.save(tmp_path / "ref" / "crop.png")
    data = vaecodec.encode(im, 40, effort=2)
    assert data != vaecodec.encode(im, 40)  # the search's file, not the fallback
    (tmp_path / "out" / "crop-q40.vae").write_bytes(data)
    other = worker("decode", tmp_path / "ref", tmp_path / "out", env=OTHER_NUMERICS)
    assert other["numerics"]["capability"] == "DEFAULT", other["numerics"]
    assert other["results"]["crop-q40.vae"] != "mismatch"
    assert abs(other["results"]["crop-q40.vae"] - psnr(im, vaecodec.decode(data))) < 0.01


def test_search_works_with_rate_control():
    im = natural_image(192, 128)
    limit = len(vaecodec.encode(im, 50))
    data = vaecodec.encode(im, size=limit, effort=1)
    assert len(data) <= limit


def test_folded_gdn_gradient_path_computes_the_same_function():
    from compressai.layers import GDN

    torch.manual_seed(0)
    for inverse in (False, True):
        gdn = GDN(16, inverse=inverse)
        with torch.no_grad():
            gdn.gamma.add_(0.05 * torch.rand_like(gdn.gamma))
        folded = fastpath.FoldedGDN(gdn)
        x = torch.randn(1, 16, 9, 7).contiguous(memory_format=torch.channels_last)
        ref = folded(x)
        xg = x.clone().requires_grad_(True)
        out = folded(xg)
        out.sum().backward()
        assert torch.allclose(out.detach(), ref, atol=1e-5)
        assert torch.allclose(out.detach(), gdn(x).detach(), atol=1e-5)
        assert xg.grad is not None and torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("effort", [-1, 5, 1.5, "2", True])
def test_bad_effort_is_a_vaecodec_error(effort):
    with pytest.raises(vaecodec.VaecodecError, match="effort"):
        vaecodec.encode(natural_image(32, 32), 50, effort=effort)


def test_cli_effort(tmp_path):
    src = tmp_path / "a.png"
    natural_image(96, 64).save(src)
    r = run_cli("encode", src, "-o", tmp_path / "a.vae", "-e", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("decode", tmp_path / "a.vae", "-o", tmp_path / "b.png", "--quiet")
    assert r.returncode == 0, r.stderr
    bad = run_cli("encode", src, "-o", tmp_path / "c.vae", "--effort", "9")
    assert bad.returncode == 2 and b"Traceback" not in bad.stderr
    assert not (tmp_path / "c.vae").exists()


def test_slow_settings_are_not_in_the_default_bench():
    from vaecodec import bench

    assert "vaecodec-e2" in bench.CODECS
    assert not any(n.startswith("vaecodec-e") for n in bench.available_codecs())
    if bench.CODECS["vaecodec"].available():
        assert bench._select_codecs("vaecodec-e2,jpeg") == ["vaecodec-e2", "jpeg"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_search_runs_on_the_gpu_and_the_file_decodes_on_the_cpu(kodim):
    """``device="cuda"``: the search (context and g_s with gradients) runs on the GPU; the
    symbols still come from the integer networks, so the CPU decodes the file."""
    im = kodim(23).crop((256, 128, 512, 384))
    data = vaecodec.encode(im, 40, effort=1, device="cuda")
    assert rd_cost(im, data) <= rd_cost(im, vaecodec.encode(im, 40, device="cuda")) + 1e-9
    assert psnr(im, vaecodec.decode(data)) > 25

"""Tests of the benchmark: the BD maths against known answers, the byte counting, and a full
run on two tiny images (fast: a few hundred milliseconds of Pillow work)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaecodec import bench

RATES = [0.1, 0.25, 0.5, 0.8, 1.2, 2.0]
PSNRS = [26.0, 29.0, 32.0, 34.5, 36.8, 39.5]


def _photo(w: int, h: int, seed: int) -> Image.Image:
    """A smooth image with some texture: compresses like a photo, not like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([128 + 90 * np.sin(x / 9 + c) * np.cos(y / 13 - c) for c in range(3)], -1)
    arr = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    _photo(64, 48, 0).save(d / "a.png")
    _photo(96, 80, 1).save(d / "b.png")
    (d / "README.txt").write_text("not an image: must be skipped")
    return d


# -- Bjontegaard -------------------------------------------------------------------------------


def test_bd_rate_identical_curves_is_zero() -> None:
    assert bench.bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)
    assert bench.bd_psnr(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)


def test_bd_rate_half_the_rate_is_minus_50_percent() -> None:
    half = [r / 2 for r in RATES]
    assert bench.bd_rate(RATES, PSNRS, half, PSNRS) == pytest.approx(-50.0, abs=1e-6)
    assert bench.bd_rate(half, PSNRS, RATES, PSNRS) == pytest.approx(100.0, abs=1e-6)


def test_bd_psnr_of_a_curve_one_db_higher_is_plus_one() -> None:
    up = [p + 1 for p in PSNRS]
    assert bench.bd_psnr(RATES, PSNRS, RATES, up) == pytest.approx(1.0, abs=1e-9)
    assert bench.bd_psnr(RATES, up, RATES, PSNRS) == pytest.approx(-1.0, abs=1e-9)


def test_bd_is_order_independent_and_none_without_overlap() -> None:
    rev = (RATES[::-1], PSNRS[::-1])
    half = [r / 2 for r in RATES]
    assert bench.bd_rate(*rev, half, PSNRS) == pytest.approx(-50.0, abs=1e-6)
    far = [p + 50 for p in PSNRS]
    assert bench.bd_rate(RATES, PSNRS, RATES, far) is None
    assert bench.bd_rate(RATES[:1], PSNRS[:1], RATES, PSNRS) is None


# -- metrics -----------------------------------------------------------------------------------


def test_bpp_counts_the_bytes_of_the_complete_file(image_dir: Path) -> None:
    path = image_dir / "b.png"
    img = Image.open(path).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=50, optimize=True)
    row = bench._measure(str(path), "jpeg", 50)
    assert row.error is None
    assert row.bytes == len(buf.getvalue())
    assert row.bpp == pytest.approx(8 * len(buf.getvalue()) / (96 * 80))


def test_png_is_lossless_with_infinite_psnr(image_dir: Path) -> None:
    row = bench._measure(str(image_dir / "a.png"), "png", None)
    assert row.error is None and row.psnr == math.inf and row.bpp > 0


def test_ms_ssim_is_none_on_small_images_and_measured_on_large() -> None:
    small = np.zeros((48, 64, 3), np.uint8)
    assert bench.ms_ssim(small, small) is None
    a = np.asarray(_photo(176, 168, 2))
    b = np.clip(a.astype(int) + 8, 0, 255).astype(np.uint8)
    v = bench.ms_ssim(a, b)
    assert v is not None and 0.5 < v < 1.0


def test_decoded_size_mismatch_is_recorded(image_dir: Path, monkeypatch) -> None:
    wrong = dataclasses.replace(bench.CODECS["jpeg"], decode=lambda data: Image.new("RGB", (2, 2)))
    monkeypatch.setitem(bench.CODECS, "jpeg", wrong)
    row = bench._measure(str(image_dir / "a.png"), "jpeg", 50)
    assert row.error is not None and "size" in row.error and row.bpp is None


# -- the run -----------------------------------------------------------------------------------


def test_end_to_end_writes_json_csv_png(image_dir: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps([{"name": "published-x", "bpp": [0.2, 0.5, 1.0, 2.0],
                                "psnr": [30.0, 34.0, 38.0, 42.0]}]))
    out = tmp_path / "out"
    result = bench.run_bench(image_dir, codecs="jpeg,webp", out=out, reference=ref,
                             progress=False)

    n_rows = 2 * (len(bench.JPEG_QUALITIES) + len(bench.WEBP_QUALITIES))
    assert len(result.rows) == n_rows and not result.errors
    assert result.config["images"] == ["a.png", "b.png"]
    assert {r.codec for r in result.rows} == {"jpeg", "webp"}
    assert "webp" in result.table and "published-x [ref]" in result.table

    # BD: webp and the reference, both against jpeg
    bd = {b.codec: b for b in result.bd}
    assert set(bd) == {"webp", "published-x"} and bd["published-x"].reference
    assert bd["webp"].bd_rate is not None
    # every measured row says what an encode cost: the mean over its settings' images
    webp_enc = [a.enc_s for a in result.aggregates if a.codec == "webp"]
    assert bd["webp"].enc_s == pytest.approx(float(np.mean(webp_enc)))
    assert bd["published-x"].enc_s is None and "enc s/img" in result.table

    doc = json.loads((out / "results.json").read_text())
    assert set(doc) >= {"config", "machine", "aggregates", "bd", "rows"}
    assert doc["machine"]["cpu_count"] and "pillow" in doc["machine"]["versions"]
    assert any(a["codec"] == "published-x" and a["reference"] for a in doc["aggregates"])
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_rows
    assert {"image", "codec", "setting", "bytes", "bpp", "psnr", "ms_ssim"} <= set(rows[0])
    assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_aggregates_are_means_over_images(image_dir: Path) -> None:
    result = bench.run_bench(image_dir, codecs=["jpeg"], progress=False)
    agg = next(a for a in result.aggregates if a.setting == 50)
    rows = [r for r in result.rows if r.setting == 50]
    assert agg.n_images == 2
    assert agg.bpp == pytest.approx(np.mean([r.bpp for r in rows]))
    assert agg.psnr == pytest.approx(np.mean([r.psnr for r in rows]))
    assert agg.ms_ssim is None  # both images are below MS-SSIM's minimum size


def test_codec_subset_and_unknown_codec(image_dir: Path) -> None:
    result = bench.run_bench(image_dir, codecs=["png"], progress=False)
    assert result.config["codecs"] == ["png"] and len(result.rows) == 2
    assert result.bd == [] and "needs jpeg" in result.table
    with pytest.raises(ValueError, match="unknown codec 'h266'"):
        bench.run_bench(image_dir, codecs="jpeg,h266", progress=False)
    with pytest.raises(ValueError, match="qualities"):
        bench.run_bench(image_dir, codecs="jpeg", qualities="10,abc", progress=False)


def test_no_images_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no images"):
        bench.run_bench(tmp_path, codecs="jpeg", progress=False)


def test_vaecodec_entry_uses_the_public_api(image_dir: Path, monkeypatch) -> None:
    """The vaecodec codec must go through vaecodec.encode/decode (the `vaecodec decode`
    path) with the qualities asked for; here a fake API stands in for the model."""
    import vaecodec

    calls: list[float] = []

    def fake_encode(img: Image.Image, quality: float = 75, effort: int = 0,
                    rdoq: bool = True) -> bytes:
        calls.append(quality)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    def fake_decode(data: bytes) -> Image.Image:
        return Image.open(io.BytesIO(data)).convert("RGB")

    monkeypatch.setattr(vaecodec, "encode", fake_encode, raising=False)
    monkeypatch.setattr(vaecodec, "decode", fake_decode, raising=False)
    monkeypatch.setitem(bench.CODECS, "vaecodec",
                        dataclasses.replace(bench.CODECS["vaecodec"], available=lambda: True))
    result = bench.run_bench(image_dir, codecs="vaecodec", qualities="10,90", progress=False)
    assert [r.setting for r in result.rows] == [10.0, 90.0, 10.0, 90.0]
    assert {10.0, 90.0} <= set(calls) and not result.errors
    assert all(r.psnr == math.inf for r in result.rows)


def test_parallel_jobs_give_the_same_rows(image_dir: Path) -> None:
    one = bench.run_bench(image_dir, codecs="png", progress=False)
    two = bench.run_bench(image_dir, codecs="png", jobs=2, progress=False)
    assert [(r.image, r.bytes) for r in one.rows] == [(r.image, r.bytes) for r in two.rows]
    assert two.machine["jobs"] == 2


def test_main_prints_the_table(image_dir: Path) -> None:
    printed: list[str] = []
    result = bench.main(image_dir, codecs="jpeg", progress=False, echo=printed.append)
    assert printed[0] == result.table and "jpeg" in printed[0]


def _real_vaecodec() -> bool:
    return bench.CODECS["vaecodec"].available()


@pytest.mark.skipif(not _real_vaecodec(), reason="vaecodec API or weights not installed")
def test_real_vaecodec_on_a_tiny_image(image_dir: Path) -> None:
    result = bench.run_bench(image_dir, codecs="vaecodec", qualities="0,100", progress=False)
    assert not result.errors, result.errors
    lo, hi = (next(a for a in result.aggregates if a.setting == q) for q in (0.0, 100.0))
    assert 0 < lo.bpp < hi.bpp and lo.psnr < hi.psnr


REFERENCE_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "reference"


@pytest.mark.skipif(not REFERENCE_DIR.is_dir(), reason="no committed reference curves")
def test_committed_reference_curves_load() -> None:
    files = sorted(REFERENCE_DIR.glob("*.json"))
    curves = bench.load_reference(files)
    assert len(curves) == len(files) >= 1
    for c in curves:
        assert len(c["bpp"]) == len(c["psnr"]) == 8
        assert c["bpp"] == sorted(c["bpp"]) and 25 < c["psnr"][0] < c["psnr"][-1] < 45


def test_compressai_results_format_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "compressai.json"
    f.write_text(json.dumps({"name": "m", "results": {"bpp": [0.1, 0.2], "psnr": [28, 30],
                                                      "ms-ssim": [0.9, 0.95]}}))
    (c,) = bench.load_reference(f)
    assert c["name"] == "m" and c["psnr"] == [28.0, 30.0] and c["ms_ssim"] == [0.9, 0.95]
    f.write_text(json.dumps([{"name": "bad", "bpp": [0.1]}]))
    with pytest.raises(ValueError, match="psnr"):
        bench.load_reference(f)


# -- the other codecs --------------------------------------------------------------------------


def _av1c_subsampling(data: bytes) -> tuple[int, int]:
    """(chroma_subsampling_x, chroma_subsampling_y) from an AVIF file's av1C box: the layout
    the encoder really used, whatever it was asked for."""
    i = data.index(b"av1C") + 4
    flags = data[i + 2]
    return (flags >> 3) & 1, (flags >> 2) & 1


@pytest.mark.skipif(not bench.CODECS["avif"].available(), reason="Pillow without AVIF")
def test_avif_is_measured_in_both_chroma_layouts(image_dir: Path, tmp_path: Path) -> None:
    img = _photo(64, 48, 3)
    assert _av1c_subsampling(bench.CODECS["avif"].encode(img, 50)) == (1, 1)      # 4:2:0
    assert _av1c_subsampling(bench.CODECS["avif444"].encode(img, 50)) == (0, 0)   # 4:4:4
    result = bench.run_bench(image_dir, codecs="avif444,avif", out=tmp_path / "out",
                             progress=False)
    assert result.config["codecs"] == ["avif", "avif444"] and not result.errors
    assert {b.codec for b in result.bd} == set()          # no jpeg anchor asked for
    assert "avif444" in result.table and "4:4:4" in result.config["codec_notes"]["avif444"]
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {a["codec"] for a in doc["aggregates"]} == {"avif", "avif444"}


@pytest.mark.skipif(not bench.CODECS["jxl"].available(), reason="pillow-jxl-plugin missing")
def test_jpeg_xl_is_in_the_same_table_json_and_csv(image_dir: Path, tmp_path: Path) -> None:
    codec = bench.CODECS["jxl"]
    img = _photo(64, 48, 4)
    lo, hi = codec.encode(img, 10), codec.encode(img, 90)
    assert lo[:2] == b"\xff\x0a" and len(lo) < len(hi)          # a bare JPEG XL codestream
    back = codec.decode(hi)
    assert back.size == img.size and bench.psnr(np.asarray(img), np.asarray(back)) > 30
    result = bench.run_bench(image_dir, codecs="jpeg,jxl", out=tmp_path / "out", progress=False)
    assert not result.errors and "jxl" in bench.available_codecs()
    bd = {b.codec: b for b in result.bd}
    assert bd["jxl"].bd_rate is not None and "jxl" in result.table
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        codecs = {r["codec"] for r in csv.DictReader(f)}
    assert codecs == {"jpeg", "jxl"}


@pytest.mark.skipif(not bench.CODECS["avif"].available() or not bench.CODECS["jxl"].available(),
                    reason="Pillow without AVIF or pillow-jxl-plugin missing")
def test_slow_presets_are_named_rows_beside_the_defaults(image_dir: Path) -> None:
    """avifenc -s 0 in both chroma layouts and cjxl -e 9: real slower settings (different
    files), measured only when named, in the same table as the default presets."""
    img = _photo(64, 48, 5)
    for slow, default in (("avif-s0", "avif"), ("avif444-s0", "avif444"), ("jxl-e9", "jxl")):
        assert slow not in bench.available_codecs() and default in bench.available_codecs()
        assert bench.CODECS[slow].encode(img, 50) != bench.CODECS[default].encode(img, 50)
        assert bench.CODECS[slow].decode(bench.CODECS[slow].encode(img, 50)).size == img.size
    assert _av1c_subsampling(bench.CODECS["avif444-s0"].encode(img, 50)) == (0, 0)
    assert _av1c_subsampling(bench.CODECS["avif-s0"].encode(img, 50)) == (1, 1)
    assert bench._select_codecs("jxl-e9,avif-s0,jpeg") == ["jpeg", "avif-s0", "jxl-e9"]

"""The shipped weights reproduce the committed Kodak results (the model card's figures) on
real images: same bytes, same PSNR, so the README and the model card cannot drift from them."""

import csv
from pathlib import Path

import pytest

import vaecodec

from conftest import ROOT, psnr

RESULTS = ROOT / "benchmarks" / "kodak" / "results.csv"


def committed_rows():
    if not RESULTS.is_file():
        return []
    with open(RESULTS, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["codec"] == "vaecodec" and not r["error"]]
    return [r for r in rows if r["image"] in ("kodim01.png", "kodim23.png")
            and float(r["setting"]) in (0.0, 45.0, 100.0)]


@pytest.mark.parametrize("row", committed_rows(), ids=lambda r: f"{r['image']}-q{r['setting']}")
def test_shipped_weights_reproduce_committed_results(row, kodak):
    from PIL import Image

    with Image.open(kodak / row["image"]) as im:
        im = im.convert("RGB")
    data = vaecodec.encode(im, float(row["setting"]))
    assert len(data) == int(row["bytes"])
    assert abs(psnr(im, vaecodec.decode(data)) - float(row["psnr"])) < 0.02


def test_committed_results_exist():
    assert len(committed_rows()) == 6, "regenerate benchmarks/kodak with vaecodec bench"

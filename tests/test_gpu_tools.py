"""The GPU tools (tools/gpu/) work on the CPU, so a lent machine's minutes are not
spent finding their bugs: the half-precision EMA file a GPU run returns can be exported,
encoded with and trained from, and the cross-device check runs and reports."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner

import vaecodec
from vaecodec.cli import main

from conftest import natural_image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "gpu"))
from shrink import shrink  # noqa: E402


def test_shrunk_checkpoint_exports_encodes_and_trains(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, size in enumerate([(80, 72), (96, 64)]):
        natural_image(*size).save(data / f"img{i}.png")
    ck, small = tmp_path / "ck.pt", tmp_path / "small.pt"
    args = ["train", str(data), "--crop", "64", "--batch-size", "2", "--threads", "1",
            "--steps", "1"]
    r = CliRunner()
    res = r.invoke(main, args + ["--out", str(ck)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    shrink(str(ck), str(small))
    assert small.stat().st_size < 0.3 * ck.stat().st_size  # no Adam moments, fp16, one copy
    full, half = torch.load(ck, weights_only=True)["ema"], torch.load(small, weights_only=True)
    w = "g_a.2.weight"
    assert half["ema"][w].dtype == torch.float16
    assert torch.equal(half["ema"][w].float(), full[w].half().float())
    assert half["ema"]["y_log_gain"].dtype == torch.float32  # small tensors stay exact

    out = tmp_path / "w.safetensors"
    res = r.invoke(main, ["export", str(small), str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert vaecodec.decode(vaecodec.encode(natural_image(64, 48), 50, model=out),
                           model=out).size == (64, 48)
    res = r.invoke(main, args + ["--out", str(tmp_path / "ck2.pt"), "--init-from", str(small)],
                   catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "init: checkpoint" in res.output


def test_crossdevice_check_runs_and_reports(tmp_path):
    natural_image(64, 48).save(tmp_path / "a.png")
    out = tmp_path / "cd.json"
    subprocess.run([sys.executable, str(ROOT / "tools" / "gpu" / "crossdevice.py"),
                    str(tmp_path), "--devices", "cpu", "--qualities", "20,80",
                    "--model", str(ROOT / "models" / "vaecodec-hyperprior-vr.safetensors"),
                    "--out", str(out)], check=True, capture_output=True)
    s = json.loads(out.read_text())["summary"]
    assert (s["images"], s["decodes"], s["errors"]) == (1, 2, 0)

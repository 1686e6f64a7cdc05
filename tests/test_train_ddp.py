"""Training under torchrun: two CPU processes (gloo) train as one, stay identical, and write a
checkpoint that a single process resumes and exports."""

import os
import re
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner

from vaecodec import weights
from vaecodec.cli import main
from vaecodec.train import export_checkpoint

from conftest import natural_image

# Runs `-m vaecodec train` as torchrun would, after making each process print a hash of its
# parameters when it leaves the process group: the only way to see rank 1's weights without
# a test mode in the package.
LAUNCHER = """\
import hashlib, runpy, sys
import torch
import torch.distributed as dist

made = []
DDP = torch.nn.parallel.DistributedDataParallel


class Recording(DDP):
    def __init__(self, module, *args, **kwargs):
        super().__init__(module, *args, **kwargs)
        made.append(module)


destroy = dist.destroy_process_group


def report(*args, **kwargs):
    h = hashlib.sha256()
    for p in made[0].parameters():
        h.update(p.detach().cpu().numpy().tobytes())
    print(f"rank {dist.get_rank()} params {h.hexdigest()}", flush=True)
    return destroy(*args, **kwargs)


torch.nn.parallel.DistributedDataParallel = Recording
dist.destroy_process_group = report
runpy.run_module("vaecodec", run_name="__main__", alter_sys=True)
"""


@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
def test_two_processes_train_as_one(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        natural_image(200, 200, seed=i).save(data / f"img{i}.png")
    ck = tmp_path / "ck.pt"
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    args = [str(data), "--out", str(ck), "--crop", "64", "--batch-size", "2", "--threads", "1"]
    # --standalone: a rendezvous on a free local port, so parallel test runs do not collide
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(launcher), "train", *args, "--steps", "3"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "batch 2 x 2 processes (4 per step)" in out
    assert out.count("done: 3 steps") == 1  # rank 0 alone reports and writes
    hashes = dict(re.findall(r"rank (\d) params ([0-9a-f]{64})", out))
    assert set(hashes) == {"0", "1"}, out
    assert hashes["0"] == hashes["1"], "the replicas drifted apart"

    state = torch.load(ck, map_location="cpu", weights_only=True)
    assert state["step"] == 3
    assert not any(k.startswith("module.") for k in state["model"])  # the single-process format

    res = CliRunner().invoke(main, ["train", *args, "--steps", "4", "--resume", str(ck)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert torch.load(ck, map_location="cpu", weights_only=True)["step"] == 4
    w = tmp_path / "ddp.safetensors"
    export_checkpoint(str(ck), str(w), model_id="ddp")
    assert weights.load(w).model_id == "ddp"

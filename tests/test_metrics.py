"""The package's one PSNR, RD cost and machine description, which every report uses."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vaecodec import machine, metrics


def test_psnr_of_a_known_error():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 16                                   # MSE 256 / 48
    assert metrics.mse(a, b) == 256 / 48
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 * 48 / 256))
    assert metrics.psnr(a, a) == math.inf
    assert metrics.psnr_from_mse(255 ** 2) == 0.0


def test_images_are_compared_as_rgb():
    """Alpha is lossless in a .vae file, so PSNR is the codec's pixels only: an RGBA source
    against its RGB decode, or a grey image as its three equal channels."""
    rgb = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    rgba = Image.fromarray(rgb).convert("RGBA")
    rgba.putalpha(7)
    assert metrics.psnr(rgba, Image.fromarray(rgb)) == math.inf
    assert metrics.psnr(rgb, Image.fromarray(rgb ^ 1)) == metrics.psnr(rgb, rgb ^ 1)
    grey = Image.fromarray(rgb[..., 0])
    assert metrics.mse(grey, Image.fromarray(rgb[..., 0] ^ 2)) == 4.0
    with pytest.raises(ValueError, match="shapes"):
        metrics.psnr(rgb, rgb[:4])


def test_rd_cost_is_the_training_objective():
    """lambda * MSE in 8-bit levels + bpp: the value the encoder's search compares (floats)
    and training minimises (tensors), the same for both."""
    import torch

    assert metrics.rd_cost(0.01, 100.0, 0.5) == pytest.approx(1.5)
    mse01 = torch.tensor([100.0 / 255 ** 2])
    assert float(metrics.rd_cost(0.01, metrics.PEAK ** 2 * mse01, torch.tensor([0.5]))) == \
        pytest.approx(1.5)


def test_machine_info_names_the_cpu_and_torch_kernels():
    import torch

    info = machine.info()
    assert info["cpu_model"] and info["cpu_count"] == os.cpu_count()
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert torch.__version__.startswith(machine.versions(("torch",))["torch"])
    assert machine.version("vaecodec")
    commit, dirty = machine.source_revision()
    assert commit is None or len(commit) == 40


def test_the_helpers_import_nothing_heavy():
    """Low modules: a parent process that measures its children's memory, or a CLI that
    only parses a header, can use them without torch or numpy."""
    code = ("import json, sys; from vaecodec import machine, metrics; machine.info(); "
            "print(json.dumps(sorted(m for m in ('torch', 'numpy') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert json.loads(out) == []
    info = subprocess.run([sys.executable, "-c", "import json; from vaecodec import machine; "
                           "print(json.dumps(machine.info()))"], capture_output=True,
                          text=True, timeout=120, check=True).stdout
    assert "torch_threads" not in json.loads(info)      # torch described only when imported

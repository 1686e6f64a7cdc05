import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaecodec import metrics
from vaecodec.metrics import psnr  # noqa: F401  (the tests import it from here)

ROOT = Path(__file__).resolve().parent.parent
# VAECODEC_TEST_KODAK=/nowhere runs the suite as a clone without ../shared would
KODAK = Path(os.environ.get("VAECODEC_TEST_KODAK", ROOT.parent / "shared" / "data" / "kodak"))


@pytest.fixture(autouse=True)
def torch_global_state():
    """Training tests run in-process and set torch's thread count and seed for themselves;
    without this every later test would run on their one thread and seeded RNG (slower, and
    blind to what differs between runs)."""
    import torch

    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)


@pytest.fixture(scope="session")
def kodak() -> Path:
    if not KODAK.is_dir():
        pytest.skip("../shared/data/kodak is not present")
    return KODAK


#: A few Kodak photos kept in the repository (lossless WebP, the same pixels as the PNGs), so
#: a clone without ../shared still tests the codec on real photographs; tests/data/README.md
#: says where they come from and under which licence.
BUNDLED = ROOT / "tests" / "data"


def kodak_photo(n: int) -> Path | None:
    """Kodak image n: from ../shared when it is there, else the bundled copy, else None."""
    for path in (KODAK / f"kodim{n:02d}.png", BUNDLED / f"kodim{n:02d}.webp"):
        if path.is_file():
            return path
    return None


@pytest.fixture(scope="session")
def kodim():
    def load(n: int) -> Image.Image:
        path = kodak_photo(n)
        if path is None:
            pytest.skip(f"kodim{n:02d} is neither in ../shared/data/kodak nor in tests/data")
        with Image.open(path) as im:
            return im.convert("RGB")
    return load


def rd_cost(im: Image.Image, data: bytes) -> float:
    """The training objective measured on a file: lambda * MSE(8-bit) + bits per pixel, at
    the lambda of the file's quality (header and checksums included: the same few bytes for
    files of one image)."""
    import vaecodec
    from vaecodec import codec, weights

    model = weights.load().model
    lam = model.lambda_for(codec.quality_to_level(vaecodec.read_header(data).quality,
                                                  model.levels))
    return metrics.rd_cost(lam, metrics.mse(vaecodec.decode(data), im),
                           8 * len(data) / (im.width * im.height))


def run_cli(*args, input: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    """The installed console script's code path, in a fresh process (real stdin/stdout)."""
    return subprocess.run([sys.executable, "-m", "vaecodec.cli", *map(str, args)], input=input,
                          capture_output=True, cwd=cwd, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "default"})


def natural_image(w: int, h: int, seed: int = 0) -> Image.Image:
    """A crop of a Kodak photo (codec behaviour on noise is meaningless); noise only if the
    bundled photos are missing too."""
    path = kodak_photo(23)
    if path is not None:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if w <= im.width and h <= im.height:
                return im.crop((100, 60, 100 + w, 60 + h))
            return im.resize((w, h), Image.BICUBIC)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (max(h // 8, 1), max(w // 8, 1), 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.BICUBIC)

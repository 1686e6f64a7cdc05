"""Build ``.gpu/``: what a lent GPU machine needs beyond the repository, in under 64 MiB.

The device tool carries the working tree plus at most 64 MiB of ignored paths, and that
machine cannot reach the package registries or ``../shared``. So this packs:

- ``.gpu/train/`` and ``.gpu/train_hq/``: the training photos as JPEG quality 90 with 4:4:4
  chroma (the PNGs are 172 and 60 MB). Most of ``train/`` is JPEG-origin already, and
  training washes residual blocking out with its 2x-downscaled crops, so one more mild JPEG
  pass costs little. The held-out photos (``vaecodec.train.held_out``, chosen by the PNG's
  name) are not packed: renamed to .jpg they would fall on the other side of the split.
- ``.gpu/kodak/``: the 24 Kodak PNGs, unchanged, for the cross-device check. They are
  carried by a separate call: with the training set they would exceed the limit.
- ``.gpu/whl/``: the CompressAI and pytorch-msssim wheels for the GPU image's Python (3.12);
  torch, torchvision, numpy, Pillow, click, safetensors, tqdm and matplotlib are already there.

Run here, once per machine: ``python tools/gpu/pack.py`` (see tools/gpu/README.md).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / ".gpu"))
    ap.add_argument("--quality", type=int, default=90)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from vaecodec.train import held_out

    out = Path(a.out)
    train, hq, kodak, whl = out / "train", out / "train_hq", out / "kodak", out / "whl"
    for d in (train, hq, kodak, whl):
        d.mkdir(parents=True, exist_ok=True)
    for src, dst_dir in (("train", train), ("train_hq", hq)):
        for f in sorted(Path(a.shared, src).glob("*.png")):
            dst = dst_dir / (f.stem + ".jpg")
            if not dst.exists() and not held_out(f.name):
                with Image.open(f) as im:
                    im.convert("RGB").save(dst, "JPEG", quality=a.quality, subsampling=0)
    for f in sorted(Path(a.shared, "kodak").glob("*.png")):
        if not (kodak / f.name).exists():
            shutil.copy2(f, kodak / f.name)
    for name, spec in (("compressai", "compressai==1.2.8"), ("pytorch_msssim", "pytorch-msssim")):
        if not list(whl.glob(f"{name}-*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            "--only-binary=:all:", "--python-version", "3.12",
                            "--implementation", "cp", "--platform", "manylinux_2_34_x86_64",
                            "-d", str(whl), spec], check=True)
    for d in (train, hq, kodak, whl):
        mb = sum(p.stat().st_size for p in d.iterdir()) / 2 ** 20
        print(f"{d.relative_to(ROOT) if d.is_relative_to(ROOT) else d}: "
              f"{len(list(d.iterdir()))} files, {mb:.1f} MiB")


if __name__ == "__main__":
    main()

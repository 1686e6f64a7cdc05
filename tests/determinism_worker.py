"""Run in a separate process by test_determinism.py, under other numerics than the encoder's.

    python determinism_worker.py encode KODAK_DIR OUT_DIR Q1,Q2 [float]
    python determinism_worker.py decode KODAK_DIR OUT_DIR [float]

Both print JSON {"numerics": ..., "results": ...}: the numerics the process really ran under
(torch's thread count, ATen's CPU capability, oneDNN's ISA limit, and whether the integer
layers used int8 GEMMs or float64 convolutions), so that the test can check the runs differ
in what it set and say so when they disagree. ``results`` is {file: psnr or "mismatch"} for
``decode``. ``float`` selects the float hyper-synthesis and context, in their float32, on
both sides: the control, which differs from the real run in nothing else.
"""

import json
import os
import sys
from pathlib import Path

from PIL import Image

import vaecodec
from vaecodec import codec, image, intnet, machine, weights
from vaecodec.errors import DecodeMismatchError
from vaecodec.metrics import psnr


def numerics(integer: bool) -> dict:
    """What this process computed with: the properties the environment variables set."""
    info = machine.info()
    return {"threads": info["torch_threads"], "capability": info["cpu_capability"],
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL"),
            "integer": integer,
            "integer_gemm": ("int8" if intnet._int8_gemm_pays() else "float64")
            if integer else None}


def main(cmd, kodak, out, *rest):
    kodak, out = Path(kodak), Path(out)
    loaded = weights.load()
    res = {}
    if cmd == "encode":
        integer = rest[1:] != ("float",)
        for f in sorted(kodak.glob("*.png")):
            rgb = image.split(Image.open(f)).rgb
            for q in map(float, rest[0].split(",")):
                c = codec.encode_pixels(rgb, q, loaded, integer=integer)
                data = vaecodec.bitstream.pack(
                    vaecodec.bitstream.Container(c.header, c.y_string, c.z_string))
                (out / f"{f.stem}-q{q:g}.vae").write_bytes(data)
    else:
        integer = rest != ("float",)
        for f in sorted(out.glob("*.vae")):
            c = vaecodec.bitstream.unpack(f.read_bytes())
            try:
                rgb = codec.decode_pixels(codec.Coded(c.header, c.y_string, c.z_string),
                                          loaded, integer=integer)
            except DecodeMismatchError:
                res[f.name] = "mismatch"
                continue
            with Image.open(kodak / (f.stem.split("-")[0] + ".png")) as ref:
                res[f.name] = psnr(ref, Image.fromarray(rgb))
    print(json.dumps({"numerics": numerics(integer), "results": res}))


if __name__ == "__main__":
    main(*sys.argv[1:])

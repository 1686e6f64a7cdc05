"""Run in a separate process by test_determinism.py, under other numerics than the encoder's.

    python determinism_worker.py encode KODAK_DIR OUT_DIR Q1,Q2 [float]
    python determinism_worker.py decode KODAK_DIR OUT_DIR [float64]

``decode`` prints JSON {file: psnr or "mismatch"}. ``float``/``float64`` select the old
float hyper-synthesis path (the control that shows the failure is real).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vaecodec
from vaecodec import codec, image, weights
from vaecodec.errors import DecodeMismatchError


class Float64(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m.double()

    def forward(self, *args):
        out = self.m(*(a.double() for a in args))
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def main(cmd, kodak, out, *rest):
    kodak, out = Path(kodak), Path(out)
    loaded = weights.load()
    if cmd == "encode":
        integer = not (len(rest) > 1 and rest[1] == "float")
        for f in sorted(kodak.glob("*.png")):
            rgb = image.split(Image.open(f)).rgb
            for q in map(float, rest[0].split(",")):
                c = codec.encode_pixels(rgb, q, loaded, integer=integer)
                data = vaecodec.bitstream.pack(
                    vaecodec.bitstream.Container(c.header, c.y_string, c.z_string))
                (out / f"{f.stem}-q{q:g}.vae").write_bytes(data)
        return
    integer = not (rest and rest[0] == "float64")
    if not integer:
        loaded.model._cache()          # coder tables first, from the original h_s
        loaded.model.h_s = Float64(loaded.model.h_s)
        context = getattr(loaded.model, "context", None)
        if hasattr(context, "anchor_params"):     # channel groups: called pass by pass
            context.double()
        elif context is not None:                 # the checkerboard's second network
            loaded.model.context = Float64(context)
    res = {}
    for f in sorted(out.glob("*.vae")):
        c = vaecodec.bitstream.unpack(f.read_bytes())
        try:
            rgb = codec.decode_pixels(codec.Coded(c.header, c.y_string, c.z_string), loaded,
                                      integer=integer)
        except DecodeMismatchError:
            res[f.name] = "mismatch"
            continue
        ref = np.asarray(Image.open(kodak / (f.stem.split("-")[0] + ".png")).convert("RGB"),
                         dtype=np.float64)
        mse = ((ref - rgb.astype(np.float64)) ** 2).mean()
        res[f.name] = float(10 * np.log10(255 ** 2 / mse))
    print(json.dumps(res))


if __name__ == "__main__":
    main(*sys.argv[1:])

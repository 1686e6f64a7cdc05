"""The cross-device check: files encoded on the GPU decode on the CPU, and the reverse.

For every image and quality: encode on each device, decode each file on each device. A
decode that reads other symbols than the encoder wrote fails on the symbol CRC, so
"decoded" means identical symbols; the table also gives PSNR against the original and the
largest pixel difference between the CPU and GPU decodes of the same file (the float
synthesis transform may round differently; the decodes of one file should stay within
0.01 dB of each other). Results: benchmarks/crossdevice/, described in benchmarks/README.md.

    python3 tools/gpu/crossdevice.py .gpu/kodak --out $OUT/crossdevice.json
    python3 tools/gpu/crossdevice.py ../shared/data/kodak --devices cpu,cpu --limit 1  # dry run
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

import vaecodec
from vaecodec.metrics import psnr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images")
    ap.add_argument("--out", default="crossdevice.json")
    ap.add_argument("--devices", default="cuda,cpu")
    ap.add_argument("--qualities", default="10,50,90")
    ap.add_argument("--model", default="models/vaecodec-groups-vr.safetensors")
    ap.add_argument("--limit", type=int, default=0)
    a = ap.parse_args()
    import torch

    devices = a.devices.split(",")
    files = sorted(Path(a.images).glob("*.png"))[: a.limit or None]
    rows, t0 = [], time.time()
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
        ref = np.asarray(im)
        for q in (float(v) for v in a.qualities.split(",")):
            files_by = {}
            for enc in devices:
                try:
                    files_by[enc] = vaecodec.encode(im, q, model=a.model, device=enc)
                except Exception as e:  # recorded, so one run reports every failure
                    rows.append({"image": f.name, "q": q, "enc": enc, "error": repr(e)})
            for enc, data in files_by.items():
                out = {}
                for dec in devices:
                    row = {"image": f.name, "q": q, "enc": enc, "dec": dec, "bytes": len(data)}
                    try:
                        out[dec] = np.asarray(vaecodec.decode(data, model=a.model, device=dec))
                        row["psnr"] = psnr(ref, out[dec])
                    except Exception as e:
                        row["error"] = repr(e)
                    rows.append(row)
                if len(out) == 2:
                    x, y = out.values()
                    rows[-1]["max_pixel_diff_between_decoders"] = int(
                        np.abs(x.astype(int) - y.astype(int)).max())
                    rows[-1]["psnr_diff_between_decoders"] = abs(psnr(ref, x) - psnr(ref, y))
            if len(files_by) == 2:
                rows[-1]["same_bytes_both_encoders"] = files_by[devices[0]] == files_by[devices[1]]
        print(f"{f.name}: {sum('error' in r for r in rows)} errors so far", flush=True)
    errors = [r for r in rows if "error" in r]
    diffs = [r["psnr_diff_between_decoders"] for r in rows if "psnr_diff_between_decoders" in r]
    summary = {
        "devices": devices, "images": len(files), "qualities": a.qualities,
        "decodes": sum("dec" in r for r in rows), "errors": len(errors),
        "max_psnr_diff_between_decoders": max(diffs, default=None),
        "max_pixel_diff_between_decoders": max(
            (r["max_pixel_diff_between_decoders"] for r in rows
             if "max_pixel_diff_between_decoders" in r), default=None),
        "files_identical_across_encoders": sum(bool(r.get("same_bytes_both_encoders"))
                                               for r in rows),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "seconds": round(time.time() - t0, 1),
    }
    Path(a.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    print(json.dumps(summary, indent=1))
    for r in errors[:5]:
        print("error:", r)


if __name__ == "__main__":
    main()

"""Speed: vaecodec against CompressAI's own MeanScaleHyperprior, same network, same bits.

    python benchmarks/speed.py ../shared/data/kodak --out benchmarks/speed [--quality 50]
        [--threads 2] [--repeat 3]

For a fair race the CompressAI model is *our* network: its g_a, h_a, h_s, g_s and entropy
bottleneck get the shipped weights, with the chosen rate level's gains folded into the
layers next to them (y gain into g_a's last conv and h_s's outputs, its reciprocal into
h_a's first conv, which reads the ungained y, inverse y gain into
g_s's first deconv, z gains into h_a's last conv and h_s's first deconv). It then computes
exactly our float pipeline at that rate, so both sides produce the same bits, up to the last
float digit: the table shows both bpp and PSNR so this can be checked.

Timed per image, interleaved, in one process, with the same thread count, best of
``--repeat`` runs after a warm-up:

- ``vaecodec``: ``vaecodec.encode(image, q, rdoq=False)`` -> complete .vae bytes, and
  ``vaecodec.decode(bytes)`` -> image (container, checksums and Pillow included); rounding
  to nearest like CompressAI, so that both sides code the same symbols;
- ``rdoq``: the default encoder, ``vaecodec.encode(image, q)`` (rate-distortion optimised
  rounding, rdoq.py): its time, and its bpp and PSNR beside the others (decoding is the same);
- ``vaecodec --fast``: ``vaecodec`` with ``fast=True`` on both sides (bfloat16 transforms, see
  ``codec.bf16``): other symbols and pixels than float32, so its bpp and PSNR are reported
  beside the exact ones rather than claimed equal;
- ``vaecodec-as-trained``: the same codec with the inference rewrites of fastpath.py off
  (``weights.load(fast=False)``), pixels in and out (``codec.encode_pixels``/``decode_pixels``);
- ``compressai``: ``MeanScaleHyperprior.compress(x)`` / ``.decompress(strings, shape)`` under
  ``torch.no_grad()``, as compressai.utils.eval_model runs them (padded tensor in, tensor out);
- ``floor``: what no exact encoder or decoder of this network can skip, timed alone: the
  float32 convolutions of g_a (encode) or g_s (decode), one after the other in vaecodec's
  fastest form (channels-last; GDN, h_a, entropy coding and Pillow left out), plus the exact
  integer hyper-synthesis that both sides need for identical CDF indexes. If the floor is
  already over half of CompressAI's time, the half-time goal cannot be met with the same
  arithmetic on that machine; ``floor_*_ratio`` says how close it is.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")

import vaecodec  # noqa: E402
from vaecodec import codec, machine, weights  # noqa: E402
from vaecodec.bench.measure import best_of  # noqa: E402
from vaecodec.metrics import psnr  # noqa: E402
from vaecodec.intnet import gains_fixed  # noqa: E402


def compressai_twin(path: str | None, level: float):
    """CompressAI MeanScaleHyperprior carrying our weights at one rate level (gains folded)."""
    from compressai.models import MeanScaleHyperprior

    loaded = weights.load(path, fast=False)
    m = loaded.model
    net = MeanScaleHyperprior(N=m.N, M=m.M)
    own = {k: v for k, v in m.state_dict().items()
           if k.split(".")[0] in ("g_a", "g_s", "h_a", "h_s", "entropy_bottleneck")}
    net.load_state_dict(own, strict=False)
    gy = torch.tensor(gains_fixed(m.y_log_gain, level)[0], dtype=torch.float32)
    gy_inv = torch.tensor(gains_fixed(m.y_log_gain_inv, level)[0], dtype=torch.float32)
    gz = torch.tensor(gains_fixed(m.z_log_gain, level)[0], dtype=torch.float32)
    gz_inv = torch.tensor(gains_fixed(m.z_log_gain_inv, level)[0], dtype=torch.float32)
    with torch.no_grad():
        last = net.g_a[-1]                       # y * gy
        last.weight.mul_(gy.view(-1, 1, 1, 1))
        last.bias.mul_(gy)
        h_in = net.h_a[0]                        # ... but h_a reads the ungained y
        h_in.weight.mul_((1 / gy).view(1, -1, 1, 1))
        first = net.g_s[0]                       # g_s(y_hat * gy_inv); deconv weight (in, out)
        first.weight.mul_(gy_inv.view(-1, 1, 1, 1))
        z_last = net.h_a[-1]                     # z * gz
        z_last.weight.mul_(gz.view(-1, 1, 1, 1))
        z_last.bias.mul_(gz)
        h_first = net.h_s[0]                     # h_s(z_hat * gz_inv)
        h_first.weight.mul_(gz_inv.view(-1, 1, 1, 1))
        out = net.h_s[-1]                        # (scales, means) * gy
        g2 = torch.cat([gy, gy])
        out.weight.mul_(g2.view(-1, 1, 1, 1))
        out.bias.mul_(g2)
    net.update(force=True)
    net.eval()
    return net


def best(f, repeat: int) -> tuple[float, object]:
    """Best of `repeat` after a warm-up call of its own, so every figure skips first-call costs."""
    return best_of(f, repeat, warm_up=True)


def floor_times(loaded, xp: torch.Tensor, repeat: int) -> dict[str, float]:
    """Seconds for g_a's convolutions, g_s's convolutions and the integer h_s on this image's
    shapes (see the module docstring: the part of coding that the arithmetic fixes)."""
    from vaecodec.intnet import IntegerHyperSynthesis

    from vaecodec.fastpath import SubpixelDeconv

    m = loaded.model
    conv_kinds = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, SubpixelDeconv)

    def convs(seq):
        return [layer for layer in seq if isinstance(layer, conv_kinds)]

    def run(layers, x):
        for layer in layers:
            x = layer(x)
        return x

    with torch.inference_mode():
        x = xp.contiguous(memory_format=torch.channels_last)
        enc, y = best(lambda: run(convs(m.g_a), x), repeat)
        dec, _ = best(lambda: run(convs(m.g_s), y), repeat)
        z = torch.randint(-8, 9, (1, m.h_a[-1].out_channels, y.shape[2] // 4, y.shape[3] // 4))
        hs = IntegerHyperSynthesis(m.h_s)
        hs_s, _ = best(lambda: hs(IntegerHyperSynthesis.to_grid(z.double())), repeat)
    return {"floor_conv_enc_s": enc, "floor_conv_dec_s": dec, "floor_int_hs_s": hs_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kodak")
    ap.add_argument("--out", default="benchmarks/speed")
    ap.add_argument("--quality", type=float, default=50.0)
    ap.add_argument("--threads", type=int, default=0, help="0: torch's default")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--images", type=int, default=0, help="first N images only")
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    files = sorted(Path(a.kodak).glob("*.png"))[: a.images or None]
    fast = weights.load(a.model)
    slow = weights.load(a.model, fast=False)
    level = codec.quality_to_level(a.quality, fast.model.levels)
    net = compressai_twin(a.model, level)

    rows = []
    for f in files:
        im = Image.open(f).convert("RGB")
        rgb = np.asarray(im)
        h, w = rgb.shape[:2]
        r = {"image": f.name}
        t, data = best(lambda: vaecodec.encode(im, a.quality, model=a.model, rdoq=False),
                       a.repeat)
        r["vaecodec_enc_s"], r["vaecodec_bpp"] = t, 8 * len(data) / (w * h)
        t, dec = best(lambda: vaecodec.decode(data, model=a.model), a.repeat)
        r["vaecodec_dec_s"], r["vaecodec_psnr"] = t, psnr(rgb, np.asarray(dec))
        t, fdata = best(lambda: vaecodec.encode(im, a.quality, model=a.model, fast=True,
                                                rdoq=False), a.repeat)
        r["fast_enc_s"], r["fast_bpp"] = t, 8 * len(fdata) / (w * h)
        t, dec = best(lambda: vaecodec.decode(fdata, model=a.model, fast=True), a.repeat)
        r["fast_dec_s"], r["fast_psnr"] = t, psnr(rgb, np.asarray(dec))

        t, rdata = best(lambda: vaecodec.encode(im, a.quality, model=a.model), a.repeat)
        r["rdoq_enc_s"], r["rdoq_bpp"] = t, 8 * len(rdata) / (w * h)
        r["rdoq_psnr"] = psnr(rgb, np.asarray(vaecodec.decode(rdata, model=a.model)))

        t, coded = best(lambda: codec.encode_pixels(rgb, a.quality, slow, rdoq=False),
                        a.repeat)
        r["as_trained_enc_s"] = t
        t, out = best(lambda: codec.decode_pixels(coded, slow), a.repeat)
        r["as_trained_dec_s"], r["as_trained_psnr"] = t, psnr(rgb, out)

        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
        ph, pw = -(-h // 64) * 64, -(-w // 64) * 64
        xp = torch.nn.functional.pad(x, (0, pw - w, 0, ph - h), mode="replicate")
        with torch.no_grad():
            t, enc = best(lambda: net.compress(xp), a.repeat)
            r["compressai_enc_s"] = t
            nbytes = sum(len(s[0]) for s in enc["strings"])
            r["compressai_bpp"] = 8 * nbytes / (w * h)
            t, dec = best(lambda: net.decompress(enc["strings"], enc["shape"]), a.repeat)
            r["compressai_dec_s"] = t
            xh = dec["x_hat"].clamp(0, 1)[0, :, :h, :w].mul(255).round().byte()
            r["compressai_psnr"] = psnr(rgb, xh.permute(1, 2, 0).numpy())
        r.update(floor_times(fast, xp, a.repeat))
        r["floor_enc_s"] = r["floor_conv_enc_s"] + r["floor_int_hs_s"]
        r["floor_dec_s"] = r["floor_conv_dec_s"] + r["floor_int_hs_s"]
        r["enc_ratio"] = r["vaecodec_enc_s"] / r["compressai_enc_s"]
        r["dec_ratio"] = r["vaecodec_dec_s"] / r["compressai_dec_s"]
        r["fast_enc_ratio"] = r["fast_enc_s"] / r["compressai_enc_s"]
        r["fast_dec_ratio"] = r["fast_dec_s"] / r["compressai_dec_s"]
        r["rdoq_enc_ratio"] = r["rdoq_enc_s"] / r["compressai_enc_s"]
        r["floor_enc_ratio"] = r["floor_enc_s"] / r["compressai_enc_s"]
        r["floor_dec_ratio"] = r["floor_dec_s"] / r["compressai_dec_s"]
        rows.append(r)
        print(f"{f.name}: enc {r['vaecodec_enc_s'] * 1e3:.0f} ms vs {r['compressai_enc_s'] * 1e3:.0f}"
              f" ({r['enc_ratio']:.2f}x), dec {r['vaecodec_dec_s'] * 1e3:.0f} ms vs "
              f"{r['compressai_dec_s'] * 1e3:.0f} ({r['dec_ratio']:.2f}x); bpp "
              f"{r['vaecodec_bpp']:.4f}/{r['compressai_bpp']:.4f}, PSNR "
              f"{r['vaecodec_psnr']:.2f}/{r['compressai_psnr']:.2f}; "
              f"--fast {r['fast_enc_ratio']:.2f}x / {r['fast_dec_ratio']:.2f}x; floor "
              f"{r['floor_enc_ratio']:.2f}x / {r['floor_dec_ratio']:.2f}x", flush=True)

    def tot(k: str) -> float:
        return sum(r[k] for r in rows)

    summary = {
        "images": len(rows), "quality": a.quality, "threads": torch.get_num_threads(),
        "machine": machine.info(),
        "torch": torch.__version__,
        "total_s": {k: round(tot(k), 3) for k in (
            "vaecodec_enc_s", "vaecodec_dec_s", "fast_enc_s", "fast_dec_s", "rdoq_enc_s",
            "as_trained_enc_s",
            "as_trained_dec_s", "compressai_enc_s", "compressai_dec_s", "floor_conv_enc_s",
            "floor_conv_dec_s", "floor_int_hs_s", "floor_enc_s", "floor_dec_s")},
        "enc_ratio_total": round(tot("vaecodec_enc_s") / tot("compressai_enc_s"), 3),
        "dec_ratio_total": round(tot("vaecodec_dec_s") / tot("compressai_dec_s"), 3),
        "fast_enc_ratio_total": round(tot("fast_enc_s") / tot("compressai_enc_s"), 3),
        "fast_dec_ratio_total": round(tot("fast_dec_s") / tot("compressai_dec_s"), 3),
        "rdoq_enc_ratio_total": round(tot("rdoq_enc_s") / tot("compressai_enc_s"), 3),
        "floor_enc_ratio_total": round(tot("floor_enc_s") / tot("compressai_enc_s"), 3),
        "floor_dec_ratio_total": round(tot("floor_dec_s") / tot("compressai_dec_s"), 3),
        "enc_ratio_median": round(statistics.median(r["enc_ratio"] for r in rows), 3),
        "dec_ratio_median": round(statistics.median(r["dec_ratio"] for r in rows), 3),
        "mean_bpp": {k: round(tot(k) / len(rows), 4) for k in (
            "vaecodec_bpp", "fast_bpp", "rdoq_bpp", "compressai_bpp")},
        "mean_psnr": {k: round(tot(k) / len(rows), 3) for k in (
            "vaecodec_psnr", "fast_psnr", "rdoq_psnr", "as_trained_psnr", "compressai_psnr")},
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        for r in rows:
            wr.writerow({k: f"{v:.5f}" if isinstance(v, float) else v for k, v in r.items()})
    (out / "results.json").write_text(json.dumps({"summary": summary, "images": rows},
                                                 indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())

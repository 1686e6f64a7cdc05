"""Big images: peak memory and time of vaecodec.encode / vaecodec.decode from 1 to 100 MP.

    python benchmarks/big_images.py ../shared/data/kodak --out benchmarks/big_images \
        [--sizes 1,6,12,24,50,100] [--quality 50] [--threads N]

The test photo of each size (3:2; 24 MP = 6000 x 4000, 100 MP = 12246 x 8164) is a mosaic of
the Kodak images, each resized with Lanczos to 960 x 640 (portrait ones turned to landscape),
placed row by row (the first column 32 px left of the image, the first row 64 px above it) and
mirrored on every other pass through the set: natural content everywhere, deterministic, and no
mosaic edge within 32 px of a codec tile boundary (multiples of 1024 px) or of the control
lines half-way between them, so none falls in the seam bands below.

Every operation runs in a fresh Python process (this script with ``--child``), so its peak RSS
(the child's own high-water mark, VmHWM in /proc/self/status, read right after the call) is its
own: interpreter, torch, weights, the image and the codec's working memory. (``ru_maxrss`` would
not do: a child's starts at its parent's peak, see ``_peak_mb``.) A child that only
imports vaecodec and torch and loads the weights gives the baseline. Times: ``enc_s`` / ``dec_s``
around the vaecodec.encode / vaecodec.decode call alone (the weights are loaded before);
``enc_cpu_s`` / ``dec_cpu_s`` the CPU time of that call (all threads: about threads x wall
time on an idle machine, and the steadier number on a busy one);
``enc_total_s`` / ``dec_total_s`` from the parent's spawn to the end of that call (Python start,
imports, weights, reading the PNG or .vae file). MB = 10^6 bytes.

Seams: the decoded image's PSNR in a 32-px band along every tile boundary (x or y a multiple of
1024) against the PSNR of the whole image, and in the same band along the lines half-way between
tile boundaries (control: same content statistics, no boundary). For the largest size a 256 x 256
crop of the decoded image centred on a tile corner (the one farthest from the mosaic's cell edges:
(5120, 4096) at 100 MP; the crop's centre lines are the tile boundaries), enlarged 2x
nearest-neighbour, goes to ``seam_crop.png``, and the original's to ``seam_crop_original.png``.

``--trace`` prints RSS checkpoints (current RSS and the peak inside each stage) around the stages
of vaecodec.codec and the model, for finding where memory goes.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

TILE_PX = 1024          # vaecodec.model.TILE latents x 16 px
BAND = 32               # seam band width in px (16 on each side of a boundary)
CELL = (960, 640)       # mosaic cell: a Kodak image resized with Lanczos
CELL_X0, CELL_Y0 = -32, -64   # where the first mosaic cell starts (see mosaic())
CROP = 256              # seam crop side in px (before the 2x enlargement)
LIMIT_MB = 3000.0       # peak RSS allowed at 100 MP
LIMIT_24MP_MB = 1500.0  # and at 24 MP


def size_for(mp: float) -> tuple[int, int]:
    """3:2 image of about ``mp`` megapixels: 1 -> 1224 x 816, 6 -> 3000 x 2000,
    24 -> 6000 x 4000, 100 -> 12246 x 8164."""
    k = round(math.sqrt(mp * 1e6 / 6))
    return 3 * k, 2 * k


# ------------------------------------------------------------------------------------------
# test images


def kodak_cells(kodak_dir: Path):
    from PIL import Image

    files = sorted(p for p in kodak_dir.iterdir() if p.suffix.lower() in (".png", ".ppm", ".tif",
                                                                            ".tiff", ".jpg"))
    if not files:
        raise SystemExit(f"no images in {kodak_dir}")
    cells = []
    for f in files:
        im = Image.open(f).convert("RGB")
        if im.height > im.width:
            im = im.transpose(Image.Transpose.ROTATE_90)
        cells.append(im.resize(CELL, Image.Resampling.LANCZOS))
    return cells


def mosaic(cells, width: int, height: int):
    from PIL import Image

    out = Image.new("RGB", (width, height))
    cw, ch = CELL
    i = 0
    # 960 = 15 * 64 and 640 = 10 * 64: the cell edges x = 960k - 32 and y = 640k - 64 are
    # 32 and 64 px (mod 64) from every multiple of 512 px, i.e. from the tile boundaries and
    # from the control lines between them, at any image size.
    for y in range(CELL_Y0, height, ch):
        for x in range(CELL_X0, width, cw):
            im = cells[i % len(cells)]
            if (i // len(cells)) % 2:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out.paste(im, (x, y))
            i += 1
    return out


# ------------------------------------------------------------------------------------------
# child side


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM in kB (empty where /proc is not Linux's)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


_TRACER = None


def _peak_mb() -> float:
    """Peak RSS of this process so far, in MB: the kernel's high-water mark of its own memory
    (VmHWM). Not ``getrusage(RUSAGE_SELF).ru_maxrss``: on Linux that also counts the memory of
    the process it was exec'ed from (the kernel carries the old image's peak over at exec, and
    subprocess spawns through vfork, so that is the parent's peak). With --trace, which resets
    VmHWM at every stage, the largest of the stages' peaks as well."""
    kb = _proc_status().get("VmHWM")
    if kb is None:  # no Linux /proc: ru_maxrss (kB on Linux, bytes on macOS) is what there is
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = ru / 1024 if sys.platform == "darwin" else ru
    if _TRACER is not None:
        kb = max(kb, _TRACER.max_kb)
    return kb * 1024 / 1e6


class Tracer:
    """RSS checkpoints around functions: for each call, RSS before and after and the peak
    inside it (the kernel's high-water mark, reset on entry through /proc/self/clear_refs;
    nested stages pass their peak up), printed to stderr and kept in ``lines``."""

    def __init__(self):
        self.stack: list[list[float]] = []
        self.lines: list[str] = []
        self.max_kb = 0.0
        self.t0 = time.perf_counter()
        self.can_reset = self._reset()

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def wrap(self, owner, name: str, label: str) -> None:
        f = getattr(owner, name, None)
        if f is None:
            self.lines.append(f"(no {label} to trace)")
            return
        tracer = self

        def traced(*args, **kwargs):
            tracer.enter(label)
            try:
                return f(*args, **kwargs)
            finally:
                tracer.leave(label)

        setattr(owner, name, traced)

    def enter(self, label: str) -> None:
        st = _proc_status()
        self.max_kb = max(self.max_kb, st.get("VmHWM", 0))
        if self.stack:
            self.stack[-1][0] = max(self.stack[-1][0], st.get("VmHWM", 0))
        self._reset()
        self.stack.append([0.0, st.get("VmRSS", 0), time.perf_counter()])
        indent = "  " * (len(self.stack) - 1)
        self._print(f"{indent}> {label}: rss {st.get('VmRSS', 0) / 1e3:.0f} MB")

    def leave(self, label: str) -> None:
        st = _proc_status()
        inner, rss0, t = self.stack.pop()
        peak = max(inner, st.get("VmHWM", 0))
        self.max_kb = max(self.max_kb, peak)
        if self.stack:
            self.stack[-1][0] = max(self.stack[-1][0], peak)
        self._reset()
        self._print(f"{'  ' * len(self.stack)}< {label}: rss {st.get('VmRSS', 0) / 1e3:.0f} MB, "
                    f"peak inside {peak / 1e3:.0f} MB (+{(peak - rss0) / 1e3:.0f} over entry), "
                    f"{time.perf_counter() - t:.2f} s")

    def _print(self, s: str) -> None:
        s = f"[{time.perf_counter() - self.t0:7.2f}s] {s}"
        self.lines.append(s)
        print(s, file=sys.stderr, flush=True)


def _install_tracer(cls: type) -> Tracer:
    """``cls``: the loaded model's class (its own methods, where it overrides the base's)."""
    import compressai.ans

    from vaecodec import codec, image as image_io, intnet, model as model_mod

    tr = Tracer()
    for name in ("read_image", "split", "merge", "save_image"):
        tr.wrap(image_io, name, f"image.{name}")
    for name in ("analyze_pixels", "code_at", "decode_pixels", "_decode_tiles",
                 "_synthesize_u8"):
        tr.wrap(codec, name, f"codec.{name}")
    for name in ("analyze", "compress_tiles", "decompress_tiles", "compress_latent",
                 "decompress", "synthesize", "_z_grid", "_code_passes"):
        tr.wrap(cls, name, f"model.{name}")
    for name in ("tiled", "symbols_crc"):
        tr.wrap(model_mod, name, f"model.{name}")
    tr.wrap(intnet.IntegerHyperSynthesis, "__call__", "intnet.IntegerHyperSynthesis")
    tr.wrap(intnet._IntLayer, "__call__", "intnet layer")
    tr.wrap(intnet, "scale_indexes", "intnet.scale_indexes")
    for cname, meth in (("RansEncoder", "encode_with_indexes"),
                        ("RansDecoder", "decode_with_indexes")):
        orig = getattr(compressai.ans, cname)

        class Traced:  # the pybind classes take no new attributes: wrap an instance
            def __init__(self, orig=orig):
                self._coder = orig()

        def call(self, *args, _meth=meth, **kwargs):
            return getattr(self._coder, _meth)(*args, **kwargs)

        setattr(Traced, meth, call)
        tr.wrap(Traced, meth, f"compressai.ans.{cname}.{meth}")
        setattr(compressai.ans, cname, Traced)
    return tr


def _band_masks(n: int) -> tuple["np.ndarray", "np.ndarray"]:
    """Along one axis of n px: pixels within BAND/2 of a tile boundary (k * TILE_PX, 0 < k),
    and within BAND/2 of a line half-way between boundaries (TILE_PX / 2 + k * TILE_PX)."""
    import numpy as np

    i = np.arange(n)
    d_edge = np.abs((i + TILE_PX // 2) % TILE_PX - TILE_PX // 2)  # distance to k*TILE_PX
    d_mid = np.abs(i % TILE_PX - TILE_PX // 2)                     # to TILE_PX/2 + k*TILE_PX
    edge = (d_edge < BAND // 2) & (i >= BAND // 2)                 # x = 0 is the image border
    mid = d_mid < BAND // 2
    return edge, mid


def seam_stats(orig, dec) -> dict[str, float | None]:
    """PSNR over the whole image, in the band along the tile boundaries and in the control band
    half-way between them; row chunks keep the extra memory small."""
    import numpy as np

    from vaecodec.metrics import psnr_from_mse

    h, w = orig.shape[:2]
    ex, mx = _band_masks(w)
    ey, my = _band_masks(h)
    sums = {"whole": [0, 0], "band": [0, 0], "control": [0, 0]}
    for r0 in range(0, h, 256):
        r1 = min(h, r0 + 256)
        d = orig[r0:r1].astype(np.int32) - dec[r0:r1].astype(np.int32)
        se = (d * d).sum(axis=2, dtype=np.int64)
        for key, m in (("whole", None), ("band", ex[None, :] | ey[r0:r1, None]),
                       ("control", mx[None, :] | my[r0:r1, None])):
            if m is None:
                sums[key][0] += int(se.sum()); sums[key][1] += se.size
            else:
                sums[key][0] += int(se[m].sum()); sums[key][1] += int(m.sum())

    def p(s, n):
        if n == 0:
            return None
        return psnr_from_mse(s / (3 * n))

    return {"psnr": p(*sums["whole"]), "psnr_band": p(*sums["band"]),
            "psnr_control": p(*sums["control"]), "band_px": sums["band"][1]}


def crop_centre(width: int, height: int) -> tuple[int, int]:
    """Where the seam crop is centred: a tile corner (multiples of TILE_PX), the one farthest
    from any mosaic cell edge, so that the crop shows the codec's tile boundaries and no cell
    edge. An axis too short for a boundary inside the crop takes its middle instead."""
    edges_x = range(CELL_X0 + CELL[0], width, CELL[0])
    edges_y = range(CELL_Y0 + CELL[1], height, CELL[1])
    cxs = list(range(TILE_PX, width - CROP // 2 + 1, TILE_PX)) or [width // 2]
    cys = list(range(TILE_PX, height - CROP // 2 + 1, TILE_PX)) or [height // 2]
    far = 1 << 30
    return max(((cx, cy) for cy in cys for cx in cxs),
               key=lambda c: min([abs(c[0] - x) for x in edges_x]
                                 + [abs(c[1] - y) for y in edges_y] + [far]))


def save_crop(arr, path: Path, cx: int, cy: int) -> int:
    """CROP x CROP pixels centred on (cx, cy), enlarged 2x nearest-neighbour."""
    from PIL import Image

    h, w = arr.shape[:2]
    x0, y0 = max(0, min(w - CROP, cx - CROP // 2)), max(0, min(h - CROP, cy - CROP // 2))
    crop = Image.fromarray(arr[y0:y0 + CROP, x0:x0 + CROP])
    crop = crop.resize((crop.width * 2, crop.height * 2), Image.Resampling.NEAREST)
    crop.save(path, optimize=True)
    return path.stat().st_size


def child(op: str, args: list[str]) -> None:
    """One measured operation; prints one JSON line (the last line of stdout)."""
    global _TRACER
    spawned = float(args[0])
    threads, trace = int(args[1]), args[2] == "1"
    import torch  # noqa: F401  (the import is part of what is measured)

    import vaecodec
    from vaecodec import weights

    if threads > 0:
        torch.set_num_threads(threads)
    if op == "whole":  # the same encode + decode with the transforms run whole, not in tiles
        from vaecodec import model as model_mod
        if not hasattr(model_mod, "TILE"):
            raise SystemExit("vaecodec.model.TILE is gone: cannot run the whole-image control")
        model_mod.TILE = 1 << 30
    t = time.perf_counter()
    loaded = weights.load(None)
    res = {"op": op, "load_s": time.perf_counter() - t, "threads": torch.get_num_threads(),
           "rss_loaded_mb": _proc_status().get("VmRSS", 0) * 1024 / 1e6,
           "model_hash": loaded.model_hash.hex(), "model_id": loaded.model_id}
    tr = _TRACER = _install_tracer(type(loaded.model)) if trace else None
    if op in ("encode", "whole"):
        from vaecodec.image import read_image

        src, dst, quality = args[3], args[4], float(args[5])
        im = read_image(src)  # as the CLI reads it (Pillow's bomb guard off, a memory check)
        t, c = time.perf_counter(), time.process_time()
        data = vaecodec.encode(im, quality)
        res["enc_s"] = time.perf_counter() - t
        res["enc_cpu_s"] = time.process_time() - c
        res["enc_total_s"] = time.time() - spawned
        res["enc_peak_mb"] = _peak_mb()
        Path(dst).write_bytes(data)
        res["bytes"] = len(data)
        if op == "whole":
            import numpy as np

            t = time.perf_counter()
            out = vaecodec.decode(data)
            res["dec_s"] = time.perf_counter() - t
            res["peak_mb"] = _peak_mb()
            res.update(seam_stats(np.asarray(im.convert("RGB")), np.asarray(out)))
    elif op == "decode":
        import numpy as np

        from vaecodec.image import read_image

        src, orig_path, crop_dir, cx, cy = args[3], args[4], args[5], int(args[6]), int(args[7])
        data = Path(src).read_bytes()
        t, c = time.perf_counter(), time.process_time()
        out = vaecodec.decode(data)
        res["dec_s"] = time.perf_counter() - t
        res["dec_cpu_s"] = time.process_time() - c
        res["dec_total_s"] = time.time() - spawned
        res["dec_peak_mb"] = _peak_mb()
        # measured; what follows (PSNR, crops) is not part of the decode
        dec = np.asarray(out)
        orig = np.asarray(read_image(orig_path).convert("RGB"))
        if dec.shape != orig.shape:
            raise SystemExit(f"decoded {dec.shape}, original {orig.shape}")
        res.update(seam_stats(orig, dec))
        if crop_dir:
            res["crop_bytes"] = save_crop(dec, Path(crop_dir) / "seam_crop.png", cx, cy)
            save_crop(orig, Path(crop_dir) / "seam_crop_original.png", cx, cy)
    elif op == "baseline":
        res["total_s"] = time.time() - spawned
        res["peak_mb"] = _peak_mb()
    else:
        raise SystemExit(f"unknown child operation {op}")
    if tr is not None:
        res["trace"] = tr.lines
        res["trace_peak_mb"] = tr.max_kb * 1024 / 1e6
        res["trace_hwm_reset"] = tr.can_reset
    print(json.dumps(res), flush=True)


# ------------------------------------------------------------------------------------------
# parent side


def run_child(op: str, *args, threads: int, trace: bool) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", op, repr(time.time()),
           str(threads), "1" if trace else "0", *map(str, args)]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if trace else subprocess.PIPE,
                       text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr or "")
        raise SystemExit(f"child {op} failed (exit {p.returncode}): {' '.join(cmd)}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
    """Versions without importing torch: the parent stays small (see ``_peak_mb``)."""
    from vaecodec import machine

    commit, dirty = machine.source_revision()
    return {**machine.info(), "loadavg_at_start": list(os.getloadavg()),
            **machine.versions(("torch", "compressai", "pillow", "vaecodec")),
            "git_commit": commit, "vaecodec_uncommitted_changes": dirty}


COLUMNS = ["mp", "width", "height", "bytes", "bpp", "psnr", "psnr_band", "psnr_control",
           "enc_s", "dec_s", "enc_s_per_mp", "dec_s_per_mp", "enc_cpu_s", "dec_cpu_s",
           "enc_total_s", "dec_total_s",
           "enc_peak_mb", "dec_peak_mb", "enc_over_baseline_mb", "dec_over_baseline_mb"]


def fmt(v, nd=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1], argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kodak_dir", type=Path, help="directory of Kodak images (the mosaic's cells)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/big_images"),
                    help="where results.json, results.csv and the seam crops go")
    ap.add_argument("--sizes", default="1,6,12,24,50,100", help="megapixels, comma-separated")
    ap.add_argument("--quality", type=float, default=50.0)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads per child (default: torch's default)")
    ap.add_argument("--whole-max-mp", type=float, default=1.0,
                    help="also code sizes up to this many MP with the transforms run whole "
                         "(no tiles), as a control for the tiling (0: never)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the test images and .vae files here (default: a temp dir)")
    ap.add_argument("--trace", action="store_true",
                    help="print RSS checkpoints around the codec's stages (slower)")
    a = ap.parse_args(argv)
    sizes = [float(s) for s in a.sizes.split(",") if s.strip()]
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="big_images_") if a.workdir is None else None
    work = Path(tmp.name) if tmp else a.workdir
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    info = machine_info()
    kw = {"threads": a.threads, "trace": a.trace}

    print(f"building test images from {a.kodak_dir} ...", flush=True)
    cells = kodak_cells(a.kodak_dir)
    paths = {}
    for mp in sizes:
        w, h = size_for(mp)
        paths[mp] = work / f"photo_{w}x{h}.png"
        if not paths[mp].exists():
            mosaic(cells, w, h).save(paths[mp], compress_level=1)
    del cells

    base = run_child("baseline", **kw)
    print(f"baseline (python + torch + vaecodec + weights): peak {base['peak_mb']:.0f} MB, "
          f"{base['total_s']:.1f} s, {base['threads']} torch threads", flush=True)
    rows = []
    for mp in sizes:
        w, h = size_for(mp)
        vae = work / f"photo_{w}x{h}.vae"
        largest = mp == max(sizes)
        e = run_child("encode", paths[mp], vae, a.quality, **kw)
        cx, cy = crop_centre(w, h)
        d = run_child("decode", vae, paths[mp], a.out if largest else "", cx, cy, **kw)
        px = w * h
        row = {"mp": px / 1e6, "width": w, "height": h, "bytes": e["bytes"],
               "bpp": 8 * e["bytes"] / px, "psnr": d["psnr"], "psnr_band": d["psnr_band"],
               "psnr_control": d["psnr_control"],
               "enc_s": e["enc_s"], "dec_s": d["dec_s"],
               "enc_cpu_s": e["enc_cpu_s"], "dec_cpu_s": d["dec_cpu_s"],
               "enc_s_per_mp": e["enc_s"] / (px / 1e6), "dec_s_per_mp": d["dec_s"] / (px / 1e6),
               "enc_total_s": e["enc_total_s"], "dec_total_s": d["dec_total_s"],
               "enc_peak_mb": e["enc_peak_mb"], "dec_peak_mb": d["dec_peak_mb"],
               "enc_over_baseline_mb": e["enc_peak_mb"] - base["peak_mb"],
               "dec_over_baseline_mb": d["dec_peak_mb"] - base["peak_mb"],
               "threads": e["threads"]}
        if "crop_bytes" in d:
            row["seam_crop"] = "seam_crop.png"
            row["seam_crop_centre"] = [cx, cy]
            row["seam_crop_bytes"] = d["crop_bytes"]
        if a.trace:
            row["trace_encode"], row["trace_decode"] = e.get("trace"), d.get("trace")
        if mp <= a.whole_max_mp:
            wh = run_child("whole", paths[mp], work / f"photo_{w}x{h}_whole.vae", a.quality, **kw)
            row.update({"whole_bytes": wh["bytes"], "whole_psnr": wh["psnr"],
                        "whole_psnr_band": wh["psnr_band"], "whole_enc_s": wh["enc_s"],
                        "whole_dec_s": wh["dec_s"], "whole_peak_mb": wh["peak_mb"],
                        "tiled_minus_whole_psnr_db": row["psnr"] - wh["psnr"]})
        rows.append(row)
        print(f"{w}x{h}: enc {row['enc_s']:.1f} s ({row['enc_peak_mb']:.0f} MB), "
              f"dec {row['dec_s']:.1f} s ({row['dec_peak_mb']:.0f} MB), "
              f"{row['bpp']:.3f} bpp, {row['psnr']:.2f} dB", flush=True)

    lo, hi = min(rows, key=lambda r: r["mp"]), max(rows, key=lambda r: r["mp"])
    peak = max(max(r["enc_peak_mb"], r["dec_peak_mb"]) for r in rows)
    near24 = min(rows, key=lambda r: abs(r["mp"] - 24))
    peak24 = max(near24["enc_peak_mb"], near24["dec_peak_mb"])
    checks = {
        "enc_s_per_mp_ratio": hi["enc_s_per_mp"] / lo["enc_s_per_mp"],
        "dec_s_per_mp_ratio": hi["dec_s_per_mp"] / lo["dec_s_per_mp"],
        "enc_cpu_s_per_mp_ratio": (hi["enc_cpu_s"] / hi["mp"]) / (lo["enc_cpu_s"] / lo["mp"]),
        "dec_cpu_s_per_mp_ratio": (hi["dec_cpu_s"] / hi["mp"]) / (lo["dec_cpu_s"] / lo["mp"]),
        "peak_rss_max_mb": peak, "peak_rss_under_3000_mb": peak < LIMIT_MB,
        "peak_rss_24mp_mb": peak24 if abs(near24["mp"] - 24) < 1 else None,
        "peak_rss_24mp_under_1500_mb": peak24 < LIMIT_24MP_MB if abs(near24["mp"] - 24) < 1
                                       else None,
        "seam_band_minus_whole_psnr_db": hi["psnr_band"] - hi["psnr"],
        "control_band_minus_whole_psnr_db": hi["psnr_control"] - hi["psnr"],
    }
    lines = [
        f"linear: s/MP at {hi['mp']:.0f} MP vs {lo['mp']:.0f} MP = "
        f"{checks['enc_s_per_mp_ratio']:.2f} (encode), {checks['dec_s_per_mp_ratio']:.2f} (decode)"
        f"; CPU s/MP: {checks['enc_cpu_s_per_mp_ratio']:.2f} (encode), "
        f"{checks['dec_cpu_s_per_mp_ratio']:.2f} (decode)",
        f"peak RSS max = {peak:.0f} MB (< {LIMIT_MB:.0f} MB: "
        f"{'yes' if checks['peak_rss_under_3000_mb'] else 'no'})"
        + (f"; at 24 MP {peak24:.0f} MB (< {LIMIT_24MP_MB:.0f} MB: "
           f"{'yes' if checks['peak_rss_24mp_under_1500_mb'] else 'no'})"
           if checks["peak_rss_24mp_mb"] is not None else ""),
        f"seams at {hi['mp']:.0f} MP: PSNR in the {BAND}-px band along tile boundaries "
        f"{hi['psnr_band']:.2f} dB, half-way between them {hi['psnr_control']:.2f} dB, "
        f"whole image {hi['psnr']:.2f} dB",
    ]
    for r in rows:
        if "whole_psnr" in r:
            lines.append(f"tiled vs whole-image transforms at {r['mp']:.1f} MP: "
                         f"{r['psnr']:.3f} vs {r['whole_psnr']:.3f} dB "
                         f"({r['tiled_minus_whole_psnr_db']:+.3f} dB), "
                         f"{r['bytes']} vs {r['whole_bytes']} bytes")

    heads = ["MP", "size", "bpp", "PSNR", "band", "ctrl", "enc s", "dec s", "enc s/MP",
             "dec s/MP", "enc cpu/MP", "dec cpu/MP", "enc tot", "dec tot", "enc MB", "dec MB",
             "enc +MB", "dec +MB"]
    table = [[f"{r['mp']:.1f}", f"{r['width']}x{r['height']}", fmt(r["bpp"], 3), fmt(r["psnr"]),
              fmt(r["psnr_band"]), fmt(r["psnr_control"]), fmt(r["enc_s"]), fmt(r["dec_s"]),
              fmt(r["enc_s_per_mp"]), fmt(r["dec_s_per_mp"]), fmt(r["enc_cpu_s"] / r["mp"]),
              fmt(r["dec_cpu_s"] / r["mp"]), fmt(r["enc_total_s"], 1),
              fmt(r["dec_total_s"], 1), fmt(r["enc_peak_mb"], 0), fmt(r["dec_peak_mb"], 0),
              fmt(r["enc_over_baseline_mb"], 0), fmt(r["dec_over_baseline_mb"], 0)]
             for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(heads)]
    print()
    print(f"quality {a.quality:g}, {rows[0]['threads']} torch threads, baseline RSS "
          f"{base['peak_mb']:.0f} MB (+MB: peak over the baseline)")
    print("  ".join(h.rjust(wd) for h, wd in zip(heads, widths)))
    for t in table:
        print("  ".join(c.rjust(wd) for c, wd in zip(t, widths)))
    print()
    for line in lines:
        print(line)

    result = {
        "config": {"kodak_dir": str(a.kodak_dir), "sizes_mp": sizes, "quality": a.quality,
                   "threads": a.threads or None, "tile_px": TILE_PX, "band_px": BAND,
                   "mosaic_cell": list(CELL), "date": started,
                   "command": " ".join([Path(sys.executable).name, *sys.argv])},
        "machine": info, "model_hash": base["model_hash"], "model_id": base["model_id"],
        "baseline": {k: base[k] for k in ("peak_mb", "rss_loaded_mb", "total_s", "load_s",
                                            "threads")},
        "rows": rows, "checks": checks, "summary": lines,
    }
    (a.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(a.out / "results.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(COLUMNS)
        for r in rows:
            wr.writerow([f"{r[c]:.4f}" if isinstance(r[c], float) else r[c] for c in COLUMNS])
    print(f"\nwrote {a.out / 'results.json'}, {a.out / 'results.csv'}"
          + (f", {a.out / 'seam_crop.png'}" if hi.get("seam_crop") else ""))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()

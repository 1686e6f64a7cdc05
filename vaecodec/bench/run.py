"""A whole bench run: from a directory and the caller's choices to a :class:`BenchResult`.
This is where the run's inputs are checked (all before any work starts), the measurements
are spread over worker processes, and the record of what was run and on which machine is
made; it is the only part that knows about processes, progress bars and the command line,
so the measurement, the maths and the report below it stay plain functions of their data.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image, UnidentifiedImageError, features

from .. import machine
from .codecs import ANCHOR, CODECS, parse_qualities, select_codecs
from .measure import init_worker, measure_one, warm_up
from .report import format_table, write_outputs
from .results import Aggregate, BenchResult, Row, aggregate, bd_table, rd_curves


def _find_images(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ValueError(f"not a directory: {directory}")
    images = []
    for p in sorted(directory.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        try:
            with Image.open(p) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError):
            continue  # READMEs, licences and such live next to data sets
        images.append(p)
    if not images:
        raise ValueError(f"no images Pillow can read in {directory}")
    return images


def load_reference(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[dict]:
    """Read published curves: a list of {"name", "bpp", "psnr"[, "ms-ssim"]} (or one such
    object, or a CompressAI results file with the lists under "results")."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    curves: list[dict] = []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read reference {path}: {exc}") from None
        for item in doc if isinstance(doc, list) else [doc]:
            data = item.get("results", item) if isinstance(item, dict) else None
            if not isinstance(data, dict) or "bpp" not in data or "psnr" not in data:
                raise ValueError(f"{path}: each reference needs 'name', 'bpp' and 'psnr' lists")
            bpp, ps = list(map(float, data["bpp"])), list(map(float, data["psnr"]))
            if len(bpp) != len(ps) or not bpp:
                raise ValueError(f"{path}: 'bpp' and 'psnr' must be non-empty, same length")
            ms = data.get("ms-ssim", data.get("ms_ssim"))
            curves.append({
                "name": str(item.get("name", Path(path).stem)),
                "bpp": bpp,
                "psnr": ps,
                "ms_ssim": list(map(float, ms)) if ms and len(ms) == len(bpp) else None,
                "source": item.get("source"),
                "file": str(path),
            })
    return curves


def _machine(jobs: int, worker_threads: int | None) -> dict[str, Any]:
    torch_threads = worker_threads
    if torch_threads is None and "torch" in sys.modules:
        torch_threads = sys.modules["torch"].get_num_threads()
    libs = {}
    for feat in ("jpg", "webp", "avif", "jpg_2000", "zlib"):
        try:
            libs[feat] = features.version(feat)
        except Exception:
            libs[feat] = None
    return {
        **machine.info(),
        "jobs": jobs,
        "torch_threads_per_process": torch_threads,
        "versions": machine.versions(("vaecodec", "torch", "compressai", "pillow", "numpy",
                                      "pytorch_msssim", "pillow-jxl-plugin")),
        "pillow_libraries": libs,
    }


def _weights_hash() -> str | None:
    """The default weights' hash (hex), so a result says which model it measured."""
    try:
        from .. import weights

        return weights.file_hash(weights.default_weights_path()).hex()
    except Exception:
        return None


def run_bench(
    directory: str | os.PathLike,
    codecs: str | Sequence[str] | None = None,
    qualities: str | Sequence[float] | None = None,
    out: str | os.PathLike | None = None,
    jobs: int = 1,
    reference: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    progress: bool = True,
) -> BenchResult:
    """Measure every image in `directory` with every selected codec and setting.

    `codecs` and `qualities` take lists or comma-separated strings, as typed on the command
    line; `qualities` replaces the vaecodec sweep only.  With `jobs` > 1 the measurements run in
    that many spawned processes (spawn, not fork: forking a process that has started torch's
    thread pools can hang), with the cores split between them; timings then share the CPU.
    Bad arguments raise ValueError before any work starts; a failing measurement is recorded
    in its row (`BenchResult.errors`) so one bad file does not lose the rest of the run.
    """
    directory = Path(directory)
    selected = select_codecs(codecs)
    vae_q = parse_qualities(qualities)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    refs = load_reference(reference) if reference else []
    images = _find_images(directory)
    settings = {n: (vae_q if n.startswith("vaecodec") else CODECS[n].settings) for n in selected}
    tasks = [(str(p), n, s) for p in images for n in selected for s in settings[n]]

    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc="bench", unit="file", disable=not progress)
    rows: list[Row] = []
    worker_threads = None
    try:
        if jobs == 1:
            warm_up(selected)
            for task in tasks:
                bar.set_postfix_str(f"{Path(task[0]).name} {task[1]}", refresh=False)
                rows.append(measure_one(*task))
                bar.update()
        else:
            worker_threads = max(1, (os.cpu_count() or 1) // jobs)
            with concurrent.futures.ProcessPoolExecutor(
                max_workers=jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
                initargs=(selected, worker_threads),
            ) as pool:
                futures = {pool.submit(measure_one, *t): i for i, t in enumerate(tasks)}
                done: dict[int, Row] = {}
                for fut in concurrent.futures.as_completed(futures):
                    done[futures[fut]] = fut.result()
                    bar.update()
                rows = [done[i] for i in range(len(tasks))]
    finally:
        bar.close()

    aggregates = aggregate(rows, selected, settings)
    curves = rd_curves(aggregates, len(images))
    for c in refs:
        ms = c["ms_ssim"] or [None] * len(c["bpp"])
        aggregates += [
            Aggregate(c["name"], i + 1, 0, b, p, m, None, None, reference=True)
            for i, (b, p, m) in enumerate(zip(c["bpp"], c["psnr"], ms))
        ]
    config = {
        "directory": str(directory),
        "images": [p.name for p in images],
        "n_images": len(images),
        "codecs": selected,
        "settings": {n: list(settings[n]) for n in selected},
        "codec_notes": {n: CODECS[n].description for n in selected},
        "anchor": ANCHOR,
        "weights": _weights_hash() if any(n.startswith("vaecodec") for n in selected) else None,
        "jobs": jobs,
        "reference": [c["file"] for c in refs],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command_line": sys.argv,
    }
    result = BenchResult(config, _machine(jobs, worker_threads), rows, aggregates,
                         bd_table(curves, refs, aggregates))
    result.table = format_table(result)
    if out is not None:
        write_outputs(result, out, curves, refs)
    return result


def main(
    directory: str | os.PathLike,
    codecs: str | Sequence[str] | None = None,
    qualities: str | Sequence[float] | None = None,
    out: str | os.PathLike | None = None,
    jobs: int = 1,
    reference: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
) -> BenchResult:
    """The `vaecodec bench` command without the Click layer: run, print the table, return.

    Raises ValueError for bad arguments (the CLI maps it to a usage error); failed
    measurements are in the returned result's `errors` and in the printed table.
    """
    result = run_bench(directory, codecs=codecs, qualities=qualities, out=out, jobs=jobs,
                       reference=reference, progress=progress)
    echo(result.table)
    if out is not None:
        echo(f"\nwrote {Path(out) / 'results.json'}, results.csv, rd.png")
    return result

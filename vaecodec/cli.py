"""The ``vaecodec`` command: one short function per subcommand over the Python API.

Errors a user can cause become one line on stderr and exit code 1 (Click's usage errors: 2);
outputs are written atomically, so a failure or Ctrl-C never leaves a partial file. The work
on files (read, code through the API, write) lives in batch.py, which also runs a batch in
worker processes; this module parses options and prints.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import click

from . import DEFAULT_QUALITY, VaecodecError, __version__
from .batch import (EXPECTED_ERRORS, DecodeTask, Done, EncodeTask, Job, Task, describe,
                    run_one)
from .batch import run as run_jobs

EPILOG = """\b
Examples:
  vaecodec encode photo.png -o photo.vae -q 60
  vaecodec decode photo.vae -o photo.png
  vaecodec decode photo.vae -o photo.tif
  vaecodec encode shots/*.jpg -o vae/ -q 50 --keep-metadata -j 2
  vaecodec encode anim.gif --frame 0
  vaecodec decode vae/ -o png/
  vaecodec info photo.vae --json
  cat photo.png | vaecodec encode - -o - > photo.vae
  vaecodec bench kodak/ --out results/
  vaecodec train photos/ --out ckpt.pt --minutes 120 --init-from models/vaecodec-groups-vr.safetensors
  vaecodec export ckpt.pt models/vaecodec-groups-vr.safetensors
"""

#: --format choices -> Pillow format names (image.OUTPUT_FORMATS has the extensions).
FORMATS = {"png": "PNG", "tif": "TIFF", "tiff": "TIFF", "bmp": "BMP", "ppm": "PPM",
           "webp": "WEBP"}


class ByteSize(click.ParamType):
    """Bytes with an optional k/M (1000-based) or KiB/MiB (1024-based) suffix."""

    name = "size"
    UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10 ** 6, "mb": 10 ** 6,
             "kib": 1024, "mib": 1024 ** 2}

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        num = text.rstrip("kKmMiIbB")
        unit = text[len(num):].lower()
        try:
            n = float(num) * self.UNITS[unit]
        except (ValueError, KeyError):
            self.fail(f"{value!r} is not a size (e.g. 40000, 50k, 1.2M, 64KiB)", param, ctx)
        if not (n >= 1 and n < 2 ** 63):
            self.fail(f"{value!r}: a size must be at least 1 byte", param, ctx)
        return int(n)


def _fail(msg: str, code: int = 1) -> None:
    click.echo(f"vaecodec: error: {msg}", err=True)
    sys.exit(code)


def friendly_errors(f):
    """Map every expected failure to one line on stderr: no traceback for a bad file."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except BrokenPipeError:
            # the reader went away (`vaecodec info x.vae | head`): quiet, like other tools
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except EXPECTED_ERRORS as e:
            _fail(describe(e))
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper


def _default_output(inp: str, suffix: str) -> str:
    return "-" if inp == "-" else str(Path(inp).with_suffix(suffix))


def _report(msg: str, output: str, quiet: bool) -> None:
    if not quiet:
        click.echo(msg, err=output == "-")


#: Options that encode and decode share.
_threads_option = click.option(
    "--threads", type=click.IntRange(min=1), metavar="N",
    help="CPU threads [default: one per core; with -j, the cores shared out].")
_jobs_option = click.option(
    "-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
    help="Files coded at once, each worker process with its own model (batches only).")


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vaecodec")
def main() -> None:
    """vaecodec: a learned image codec (hyperprior VAE with a context model, one model for
    every rate)."""


@main.command(epilog=EPILOG)
@click.argument("inputs", metavar="IN...", nargs=-1, required=True)
@click.option("-o", "--output",
              help="Output .vae file ('-' = stdout); a directory when several inputs or a "
                   "directory are given. Default: IN with .vae.")
@click.option("-q", "--quality", type=click.FloatRange(0, 100),
              help=f"0 = smallest file, 100 = best quality; any real value. "
                   f"[default: {DEFAULT_QUALITY:g}]")
@click.option("--size", "size", metavar="BYTES", type=ByteSize(),
              help="Target file size instead of -q (e.g. 40000, 50k, 1.2M, 64KiB): the best "
                   "quality whose file is not larger.")
@click.option("--target-bpp", type=click.FloatRange(min=0, min_open=True), metavar="BPP",
              help="Target bits per pixel instead of -q (an upper bound, like --size).")
@click.option("--target-psnr", type=click.FloatRange(min=0, min_open=True), metavar="DB",
              help="Target PSNR in dB instead of -q (the closest the model reaches).")
@click.option("--model", type=click.Path(dir_okay=False), help="Weights file (default: shipped).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--keep-metadata", is_flag=True,
              help="Also keep EXIF and XMP (the ICC colour profile is always kept).")
@click.option("--frame", type=click.IntRange(min=0), metavar="N",
              help="The frame (0-based) of an animation or page of a multi-page file to "
                   "code; without it such a file is refused, never cut to its first frame.")
@click.option("--fast", is_flag=True,
              help="Analysis transform in bfloat16: ~1.7x faster, ~0.1% more bits.")
@click.option("-e", "--effort", type=click.IntRange(0, 4), default=0, show_default=True,
              help="Search for better symbols for each image, priced as the context model "
                   "codes them (like cwebp -m 6 or avifenc -s 0): 1..4 run 40, 80, 160, 320 "
                   "steps; on held-out photos -7.3, -10.3, -12.1, -13.3% BD-rate against 0, "
                   "for about 50, 95, 190, 365 s per megapixel on 2 cores "
                   "(benchmarks/effort). The file is never worse than effort 0's and any "
                   "decoder reads it. With a size or PSNR target the quality is fitted "
                   "without search, then searched once. 0: no search.")
@click.option("--rdoq/--no-rdoq", default=True, show_default=True,
              help="Rate-distortion optimised rounding of the latent (like mozjpeg's trellis "
                   "quantisation; --no-rdoq rounds to nearest, as CompressAI does).")
@_threads_option
@_jobs_option
@click.option("--print-psnr", is_flag=True, help="Decode the result and print its PSNR.")
@click.option("--quiet", is_flag=True, help="Print nothing on success.")
@friendly_errors
def encode(inputs: tuple[str, ...], output: str | None, quality: float | None, size: int | None,
           target_bpp: float | None, target_psnr: float | None, model: str | None,
           device: str, keep_metadata: bool, frame: int | None, fast: bool, effort: int,
           rdoq: bool, threads: int | None, jobs: int, print_psnr: bool, quiet: bool) -> None:
    """Compress images (PNG, JPEG, anything Pillow reads) to .vae files.

    The pixels are coded upright (the EXIF orientation applied). IN may be several files or
    directories (their images, not recursive): each gives one .vae file, next to it or in
    the directory -o; a bad file is reported and skipped, and the exit code is 1 if any
    failed. With --size, --target-bpp or --target-psnr the quality is searched for each
    image (the analysis transform runs once) and reported."""
    given = [n for n, v in (("-q", quality), ("--size", size), ("--target-bpp", target_bpp),
                            ("--target-psnr", target_psnr)) if v is not None]
    if len(given) > 1:
        raise click.UsageError(f"{' and '.join(given)} are alternatives: give one")
    target = tuple((k, v) for k, v in (("size", size), ("bpp", target_bpp),
                                       ("psnr", target_psnr)) if v is not None)
    plan = _plan(inputs, output, ".vae", _is_image_name)
    task = EncodeTask(quality, target, model, device, keep_metadata, fast, effort, rdoq,
                      print_psnr, frame, threads, progress=not (quiet or plan[1]))
    _run(plan, task, quiet, "encoded", jobs)


def _plan(inputs: tuple[str, ...], output: str | None, suffix: str, wanted
          ) -> tuple[list[Job], bool]:
    """Inputs -> jobs. One file keeps the single-file meaning of -o (a file, or '-'); several
    inputs or a directory make -o a directory (created if missing). Two inputs that would
    write the same output (a.png and a.jpg) are a problem for the second, not an overwrite.
    Returns the jobs and whether this is a batch."""
    if len(inputs) == 1 and not Path(inputs[0]).is_dir():
        out = output or _default_output(inputs[0], suffix)
        if "-" not in (inputs[0], out) and Path(out).is_dir():
            out = str(Path(out) / Path(_default_output(inputs[0], suffix)).name)
        return [Job(inputs[0], out)], False
    if "-" in inputs or output == "-":
        raise click.UsageError("'-' (stdin/stdout) works with a single input only")
    if output is not None:
        if Path(output).exists() and not Path(output).is_dir():
            raise click.UsageError(f"-o {output} is not a directory: with several inputs or "
                                   f"a directory, -o names the output directory")
        Path(output).mkdir(parents=True, exist_ok=True)
    jobs, seen = [], {}
    for inp in _expand(inputs, wanted):
        if isinstance(inp, Job):
            jobs.append(inp)
            continue
        out = _default_output(inp, suffix)
        if output is not None:
            out = str(Path(output) / Path(out).name)
        key = str(Path(out).resolve())
        problem = f"{out} is also the output of {seen[key]}; skipped" if key in seen else None
        seen.setdefault(key, inp)
        jobs.append(Job(inp, out, problem))
    return jobs, True


def _expand(inputs: tuple[str, ...], wanted):
    """Files as given; directories as their wanted files, sorted (a problem if none)."""
    for inp in inputs:
        p = Path(inp)
        if not p.is_dir():
            yield inp
            continue
        files = sorted(f for f in p.iterdir() if f.is_file() and wanted(f))
        if not files:
            yield Job(inp, "", "no input files in this directory")
        yield from map(str, files)


def _is_image_name(p: Path) -> bool:
    from PIL import Image

    ext = p.suffix.lower()
    return ext != ".vae" and ext in Image.registered_extensions()


def _is_vae_name(p: Path) -> bool:
    return p.suffix.lower() == ".vae"


def _run(plan: tuple[list[Job], bool], task: Task, quiet: bool, verb: str,
         workers: int = 1) -> None:
    """Run every job; a failure is one line on stderr and the next file goes on. A single
    file fails exactly as before (its error, exit 1); Ctrl-C stops the whole batch. A batch
    shows a progress bar on a terminal's stderr and ends with a summary line."""
    jobs, batch = plan
    if not batch:
        _report(run_one(task, jobs[0]).message, jobs[0].output, quiet)
        return
    start = time.perf_counter()
    bar = _progress_bar(len(jobs), verb, quiet)
    done: list[Done] = []
    failed = 0

    def say(msg: str, err: bool) -> None:
        if bar is None:
            click.echo(msg, err=err)
            return
        with bar.external_write_mode(file=sys.stderr if err else sys.stdout):
            click.echo(msg, err=err)

    try:
        for job, outcome in run_jobs(task, jobs, workers):
            if isinstance(outcome, Done):
                done.append(outcome)
                if not quiet:
                    say(outcome.message, False)
            else:
                failed += 1
                say(f"vaecodec: error: {outcome}", True)
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    summary = f"{len(done)} of {len(jobs)} files {verb}" + (f", {failed} failed" if failed else "")
    if done:
        mean_bpp = sum(8 * d.vae_bytes / d.pixels for d in done) / len(done)
        summary += (f"; {sum(d.vae_bytes for d in done)} bytes of .vae, "
                    f"mean {mean_bpp:.4f} bpp")
    _report(f"{summary}; {time.perf_counter() - start:.1f} s", "", quiet)
    if failed:
        sys.exit(1)


def _progress_bar(total: int, verb: str, quiet: bool):
    """tqdm on stderr, only where a person watches it (not with --quiet, not into a file or
    a pipe); it disappears when done, leaving the summary line."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=verb.replace("ed", "ing"), unit="file", file=sys.stderr,
                leave=False, dynamic_ncols=True)


@main.command(epilog=EPILOG)
@click.argument("inputs", metavar="IN...", nargs=-1, required=True)
@click.option("-o", "--output",
              help="Output image ('-' = stdout): .png, .tif, .bmp, .ppm or .webp (lossless) "
                   "by its extension; a directory when several inputs or a directory are "
                   "given. Default: IN with .png.")
@click.option("-f", "--format", "fmt", type=click.Choice(sorted(FORMATS), case_sensitive=False),
              help="Format of outputs named without an extension: the default names, a "
                   "directory's files, stdout. [default: png]")
@click.option("--model", type=click.Path(dir_okay=False),
              help="Weights file (default: the installed weights the file names by hash).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--fast", is_flag=True,
              help="Synthesis transform in bfloat16 (like djpeg -dct fast): ~1.7x faster, "
                   "pixels within about a level of the exact decode.")
@_threads_option
@_jobs_option
@click.option("--quiet", is_flag=True, help="Print nothing on success.")
@friendly_errors
def decode(inputs: tuple[str, ...], output: str | None, fmt: str | None, model: str | None,
           device: str, fast: bool, threads: int | None, jobs: int, quiet: bool) -> None:
    """Decompress .vae files to PNG, TIFF, BMP, PPM or lossless WebP (with the ICC profile,
    EXIF and XMP they carry, where the format holds them).

    IN may be several files or directories (their .vae files): as for encode, one image
    each, a bad file is reported and skipped, and the exit code is 1 if any failed."""
    from .image import FORMAT_SUFFIX, output_format

    default = FORMATS[fmt.lower()] if fmt else "PNG"
    plan = _plan(inputs, output, FORMAT_SUFFIX[default], _is_vae_name)
    if not plan[1] and fmt and Path(plan[0][0].output).suffix:
        named = output_format(plan[0][0].output)
        if named != default:
            raise click.UsageError(f"-o {plan[0][0].output} names {named} but --format is "
                                   f"{fmt}: give one")
    for job in plan[0]:
        output_format(job.output, default)    # an unknown extension fails before any work
    task = DecodeTask(model, device, fast, default, threads, progress=not (quiet or plan[1]))
    _run(plan, task, quiet, "decoded", jobs)


@main.command(epilog=EPILOG)
@click.argument("file", metavar="FILE.vae")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object (header fields, sizes, bpp) for scripts.")
@friendly_errors
def info(file: str, as_json: bool) -> None:
    """Print a .vae file's header (validates it, decodes nothing)."""
    from dataclasses import fields

    from .batch import read_input
    from .bitstream import unpack

    data = read_input(file)
    c = unpack(data)
    h = c.header
    side = {tag.decode("latin-1"): len(v) for tag, v in c.side.items()}
    if as_json:
        import json

        doc = {"file": file}
        for f in fields(h):
            v = getattr(h, f.name)
            doc[f.name] = v.hex() if isinstance(v, bytes) else list(v) if isinstance(
                v, tuple) else v
        doc.update({"y_shape": [4 * h.z_shape[0], 4 * h.z_shape[1]], "bytes": len(data),
                    "y_bytes": len(c.y_string), "z_bytes": len(c.z_string),
                    "side_bytes": sum(side.values()), "side": side,
                    "bpp": 8 * len(data) / h.pixels})
        click.echo(json.dumps(doc))
        return
    rows = [
        ("format version", str(h.version)),
        ("latent codec", h.latent_codec),
        ("size", f"{h.width}x{h.height}"),
        ("mode", h.mode),
        ("quality", f"{h.quality:g}"),
        ("model", f"{h.model_id} ({h.model_hash.hex()})"),
        ("latent z", f"{h.z_shape[0]}x{h.z_shape[1]} (y {4 * h.z_shape[0]}x{4 * h.z_shape[1]})"),
        ("bytes", f"{len(data)} (y {len(c.y_string)}, z {len(c.z_string)}, "
                  f"side {sum(side.values())})"),
        ("bpp", f"{8 * len(data) / h.pixels:.4f}"),
    ]
    for tag, n in side.items():
        rows.append((f"side {tag}", f"{n} bytes"))
    for k, v in rows:
        click.echo(f"{k + ':':16}{v}")


@main.command(epilog=EPILOG)
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--codecs", help="Comma-separated subset of: vaecodec, jpeg, png, webp, avif "
                                "(4:2:0), avif444 (4:4:4), jxl, jp2; also vaecodec-e1..e4 "
                                "and vaecodec-nearest.")
@click.option("--qualities", help="vaecodec qualities to sweep, e.g. 0,25,50,75,100.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Write results.json, results.csv and rd.png here.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Parallel processes.")
@click.option("--reference", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Published RD curves (JSON) to add as rows and curves; repeatable.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def bench(directory: str, codecs: str | None, qualities: str | None, out: str | None,
          jobs: int, reference: tuple[str, ...], quiet: bool) -> None:
    """Compare vaecodec with JPEG, PNG, WebP, AVIF, JPEG XL (and JPEG 2000) on DIRECTORY's
    images: bpp from whole files, PSNR, MS-SSIM, speed, BD-rate against JPEG, an RD plot."""
    from . import bench as bench_mod

    try:
        result = bench_mod.main(directory, codecs=codecs, qualities=qualities, out=out,
                                jobs=jobs, reference=list(reference) or None,
                                progress=not quiet, echo=click.echo)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if result.errors:
        sys.exit(1)


@main.command(epilog=EPILOG)
@click.argument("data_dirs", metavar="DATA_DIR...", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, help="Checkpoint file, written every few minutes.")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False),
              help="Continue this checkpoint (same schedule: --minutes counts its time too).")
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False),
              help="Start from shipped weights (.safetensors) or a single-rate state_dict.")
@click.option("--steps", type=int, default=0, help="Stop after this many steps.")
@click.option("--minutes", type=float, default=0.0, help="Stop after this much time.")
@click.option("--batch-size", type=int, default=8, show_default=True,
              help="Crops per step and process (under torchrun the step sees N times as many).")
@click.option("--crop", type=int, default=192, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--decay-frac", type=float, default=0.2, show_default=True,
              help="Last fraction of the run that decays the learning rate to 1e-5.")
@click.option("--transform-lr", type=float, default=1.0, show_default=True,
              help="The transforms' learning rate as a fraction of --lr (the context, "
              "gains and entropy models take the full rate).")
@click.option("--ema", type=float, default=0.999, show_default=True,
              help="Decay of the weights' moving average (what is exported).")
@click.option("--rate", type=click.Choice(["noise", "ste", "mixed"]), default="noise",
              show_default=True, help="y's rate term: uniform noise; the rounded symbols "
              "(what the coder pays), straight-through; or mixed: the rounded symbols' "
              "value and gradient for the entropy parameters, noise's gradient for y.")
@click.option("--cost-power", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Divide each crop's rate-distortion cost by itself to this power in the "
              "objective: 0 the plain mean (the high rates, whose cost is 15x larger, set "
              "the gradient), 1 every crop's relative gain alike (log cost).")
@click.option("--cost-scale", type=click.Choice(["crop", "level"]), default="crop",
              show_default=True, help="What --cost-power divides by: each crop's own cost, "
              "or the running mean cost of the crop's level (the levels weigh alike, within "
              "a level the plain mean).")
@click.option("--hold-out/--no-hold-out", default=True, show_default=True,
              help="Leave out the held-out 1/16 of the photos (chosen by file name), to "
              "judge the run on.")
@click.option("--bf16/--no-bf16", default=True, show_default=True,
              help="bfloat16 autocast around the transforms (about 2x faster on CPU).")
@click.option("--log-every", type=int, default=50, show_default=True,
              help="Steps between log lines (and the host syncs they need).")
@click.option("--threads", type=int, default=0, help="Torch threads (0: all cores).")
@click.option("--device", default="cpu", show_default=True,
              help="cpu or cuda (under torchrun each process takes the GPU of its LOCAL_RANK).")
@click.option("--snapshot-minutes", type=float, default=0.0,
              help="Also keep the EMA weights every N minutes (CKPT-ema-STEP.pt), for "
                   "learning-curve points (benchmarks/learning_curve.py).")
@click.option("--log", "--log-csv", "log",
              help="Append a CSV learning curve here (under torchrun spell it --log-csv: "
              "torchrun takes --log for a prefix of its own --log-dir).")
@friendly_errors
def train(data_dirs: tuple[str, ...], out: str, resume: str | None, init_from: str | None,
          steps: int, minutes: float, batch_size: int, crop: int, lr: float,
          decay_frac: float, transform_lr: float, ema: float, rate: str, cost_power: float,
          cost_scale: str,
          hold_out: bool, bf16: bool, log_every: int, threads: int, device: str, snapshot_minutes: float,
          log: str | None) -> None:
    """Train (or continue training) the model on random crops of the images in the DATA_DIRs
    (each pixel equally likely, so a large photo gives more crops than a small one).

    \b
    Several GPUs or machines (DistributedDataParallel, nccl on GPUs, gloo on CPUs):
      torchrun --nproc_per_node=N -m vaecodec train DATA_DIR --out CKPT --device cuda ...
    """
    from .train import TrainConfig, train as run

    if not steps and not minutes:
        raise click.UsageError("give --steps or --minutes (or both)")
    cfg = TrainConfig(data=os.pathsep.join(data_dirs), out=out, steps=steps, minutes=minutes,
                      batch_size=batch_size, crop=crop, lr=lr, decay_frac=decay_frac,
                      transform_lr_mult=transform_lr, ema=ema, rate=rate, cost_power=cost_power,
                      cost_scale=cost_scale,
                      hold_out=hold_out, bf16=bf16, log_every=max(log_every, 1), threads=threads, device=device,
                      init_from=init_from, snapshot_minutes=snapshot_minutes, log=log)
    try:
        run(cfg, resume=resume)
    except ValueError as e:
        raise VaecodecError(str(e)) from None


@main.command("fit-context", epilog=EPILOG)
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--weights", "weights_file", required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Hyperprior weights (.safetensors) whose transforms stay frozen.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The context model's weights file to write (.safetensors).")
@click.option("--minutes", type=float, default=60.0, show_default=True)
@click.option("--cache", type=click.Path(dir_okay=False),
              help="Latents of DATA_DIR under --weights: read if it exists, else made and kept.")
@click.option("--lr", type=float, default=3e-4, show_default=True)
@click.option("--batch-size", type=int, default=24, show_default=True)
@click.option("--threads", type=int, default=0, help="Torch threads (0: all cores).")
@click.option("--groups", default="", metavar="G1,G2,...",
              help="Channel groups, each with its own checkerboard (e.g. 16,16,32,64,64 as "
              "ELIC); default: one group.")
@click.option("--log", help="Append the progress lines here.")
@friendly_errors
def fit_context(data_dir: str, weights_file: str, out: str, minutes: float,
                cache: str | None, lr: float, batch_size: int, threads: int, groups: str,
                log: str | None) -> None:
    """Fit the context of vaecodec 2 on cached latents, transforms frozen.

    The first stage of training the checkerboard model, and a cheap one: the photos go
    through the analysis transform once, then only the context network learns. The weights
    kept are those with the fewest bits on held-out photos; joint training of the whole
    model continues from OUT with `vaecodec train --init-from OUT`.
    """
    from .train import MODEL_IDS
    from .train_context import ContextTrainConfig, assemble, train_context
    from .weights import export as write

    cfg = ContextTrainConfig(data=data_dir, weights=weights_file, out=out + ".ctx.pt",
                             cache=cache, minutes=minutes, lr=lr, batch=batch_size,
                             threads=threads, log=log, groups=_groups(groups))
    try:
        r = train_context(cfg)
    except ValueError as e:
        raise VaecodecError(str(e)) from None
    model = assemble(weights_file, r["state"], r["config"])
    from .weights import file_hash, read_metadata

    meta = read_metadata(weights_file)
    h = write(model, out, MODEL_IDS[model.LATENT_CODEC],
              {"steps": meta.get("steps", "0"), "train_hours": meta.get("train_hours", "0"),
               "transforms_from": file_hash(weights_file).hex(),
               "context_steps": str(r["steps"]), "context_hours": f"{r['minutes'] / 60:.2f}"})
    click.echo(f"{r['steps']} steps; held-out bits {100 * r['held_out']:+.2f}% -> {out} "
               f"(hash {h.hex()})")


def _groups(text: str) -> tuple[int, ...] | None:
    try:
        groups = tuple(int(g) for g in text.split(",")) if text.strip() else None
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a list of integers", param_hint="--groups"
                                 ) from None
    if groups and min(groups) < 1:
        raise click.BadParameter("every group needs at least one channel", param_hint="--groups")
    return groups


@main.command(epilog=EPILOG)
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--model-id", help="Default: vaecodec-hyperprior-vr, vaecodec-checkerboard-vr or "
              "vaecodec-groups-vr, by architecture.")
@click.option("--no-ema", is_flag=True, help="Export the raw weights, not their moving average.")
@friendly_errors
def export(checkpoint: str, output: str, model_id: str, no_ema: bool) -> None:
    """Write a training checkpoint as a shipped weights file (CDF tables included)."""
    from .train import export_checkpoint

    h = export_checkpoint(checkpoint, output, model_id=model_id, use_ema=not no_ema)
    click.echo(f"{checkpoint} -> {output} (hash {h.hex()})")


if __name__ == "__main__":
    main()

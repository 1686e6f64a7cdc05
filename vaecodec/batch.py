"""Files in, files out: one input and its output as a job, run here or in worker processes.

The command line plans the jobs and prints; this module does the work of one job through
the public API (read, encode or decode, write atomically) and runs many of them, in this
process or in ``workers`` spawned processes with one model each. A job that fails on bad
input comes back as a one-line message, not an exception, so a batch goes on and reports
every failure; anything else is a bug and keeps its traceback.

Workers are spawned, not forked: a fork of a process that has started torch's thread pools
can hang. They ignore Ctrl-C (the main process handles it and stops them), and a worker
stopped mid-file exits through ``write_atomic``'s cleanup, so no partial or temporary file
is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Protocol

from .errors import VaecodecError

#: What a bad input file can raise; anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (VaecodecError, OSError, MemoryError)


def describe(e: BaseException) -> str:
    """One line a person understands, for an exception in ``EXPECTED_ERRORS``."""
    if isinstance(e, VaecodecError):
        return str(e)
    if isinstance(e, FileNotFoundError):
        return f"no such file or directory: {e.filename}"
    if isinstance(e, IsADirectoryError):
        return f"is a directory: {e.filename}"
    if isinstance(e, PermissionError):
        return f"permission denied: {e.filename}"
    if isinstance(e, MemoryError):
        return "out of memory"
    return getattr(e, "strerror", None) or str(e)


@dataclass
class Job:
    """One input and its output; ``problem`` is why it cannot even be tried."""

    input: str
    output: str
    problem: str | None = None


@dataclass
class Done:
    """What a finished job reports: its line, and its share of the batch's summary."""

    message: str
    vae_bytes: int          # the .vae file's size (written by encode, read by decode)
    pixels: int


class Task(Protocol):
    threads: int | None

    def __call__(self, input: str, output: str) -> Done: ...


def read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def write_output(path: str, data: "bytes | Callable[[BinaryIO], None]") -> None:
    """``data``: bytes, or a function that writes them to a file (a big image is then
    saved straight to disk, never held as a file's bytes in memory)."""
    from .image import write_atomic

    if path == "-":
        if sys.stdout.isatty():
            raise VaecodecError("refusing to write binary data to a terminal; use -o FILE")
        if callable(data):          # some writers seek (TIFF), and a pipe cannot
            import io

            buf = io.BytesIO()
            data(buf)
            data = buf.getvalue()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_atomic(path, data)


@dataclass(frozen=True)
class EncodeTask:
    """``vaecodec encode``'s options; called with one input and its output."""

    quality: float | None = None
    target: tuple[tuple[str, float], ...] = ()     # (("size", 50000),) and the like
    model: str | None = None
    device: str = "cpu"
    keep_metadata: bool = False
    fast: bool = False
    effort: int = 0
    rdoq: bool = True
    print_psnr: bool = False
    frame: int | None = None
    threads: int | None = None
    progress: bool = False

    def __call__(self, input: str, output: str) -> Done:
        import vaecodec
        from . import metrics
        from .image import prepare, read_image

        target = dict(self.target)
        # closed when done: a multi-frame file keeps its file open for seeking
        with read_image(read_input(input) if input == "-" else input) as im, \
                tile_bar("encoding", self.progress) as progress:
            data = vaecodec.encode(im, self.quality, model=self.model, device=self.device,
                                   keep_metadata=self.keep_metadata, fast=self.fast,
                                   effort=self.effort, rdoq=self.rdoq, frame=self.frame,
                                   threads=self.threads, progress=progress, **target)
            write_output(output, data)
            h = vaecodec.read_header(data)
            how = "".join(f" (chosen for --{'size' if k == 'size' else 'target-' + k} {v:g})"
                          for k, v in target.items())
            frame = f" frame {self.frame}" if self.frame is not None else ""
            msg = (f"{input} -> {output}: {h.width}x{h.height} {h.mode}{frame}, "
                   f"{len(data)} bytes, {8 * len(data) / (h.width * h.height):.4f} bpp, "
                   f"quality {h.quality:.4g}{how}")
            if self.print_psnr:
                back = vaecodec.decode(data, model=self.model, device=self.device,
                                       threads=self.threads)
                msg += f", PSNR {metrics.psnr(prepare(im, self.frame), back):.2f} dB"
        return Done(msg, len(data), h.width * h.height)


@dataclass(frozen=True)
class DecodeTask:
    """``vaecodec decode``'s options. ``format`` is the format of outputs whose name has no
    extension (stdout too); otherwise the output's extension names it."""

    model: str | None = None
    device: str = "cpu"
    fast: bool = False
    format: str = "PNG"
    threads: int | None = None
    progress: bool = False

    def __call__(self, input: str, output: str) -> Done:
        import vaecodec
        from . import image

        fmt = image.output_format(output, default=self.format)
        data = read_input(input)
        h = vaecodec.read_header(data)
        image.check_writable(fmt, h.width, h.height, h.mode)
        with tile_bar("decoding", self.progress) as progress:
            im = vaecodec.decode(data, model=self.model, device=self.device, fast=self.fast,
                                 threads=self.threads, progress=progress)
        write_output(output, lambda f: image.save_image(im, f, fmt))
        return Done(f"{input} -> {output}: {im.size[0]}x{im.size[1]} {im.mode}", len(data),
                    h.width * h.height)


@contextlib.contextmanager
def tile_bar(verb: str, on: bool) -> "Iterator[Callable[[int, int], None] | None]":
    """A progress bar of tiles done for one big file, on stderr: only where a person
    watches (``on`` is False with --quiet and in batches, which have their own bar; never
    into a file or a pipe), and only once the work has taken two seconds, so a small image
    shows nothing. Gone when done."""
    if not on or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(desc=verb, unit="tile", file=sys.stderr, leave=False, dynamic_ncols=True,
               delay=2.0)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        bar.close()


def same_file(a: str, b: str) -> bool:
    """Whether writing ``b`` would replace ``a`` (the same path, a link to it, a hard link)."""
    if "-" in (a, b):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def run_one(task: Task, job: Job) -> Done:
    """One job, after the checks that need no work: an output that would overwrite its
    input, or is a directory, fails before anything is read."""
    if job.problem:
        raise VaecodecError(job.problem)
    if same_file(job.input, job.output):
        raise VaecodecError(f"the output {job.output} is the input: it would be "
                            "overwritten; choose another -o")
    if job.output not in ("-", "") and Path(job.output).is_dir():
        raise VaecodecError(f"the output {job.output} is a directory")
    return task(job.input, job.output)


def attempt(task: Task, job: Job) -> tuple[Job, Done | str]:
    """Run one job: its Done, or the one-line reason it failed (naming the input)."""
    try:
        return job, run_one(task, job)
    except EXPECTED_ERRORS as e:
        msg = describe(e)
        return job, msg if job.input in msg else f"{job.input}: {msg}"


def cores() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run(task: Task, jobs: list[Job], workers: int = 1) -> Iterator[tuple[Job, Done | str]]:
    """Every job's outcome, in input order with one worker, as they finish with several.
    With several workers the cores are shared out among them unless ``task.threads`` says
    how many each takes."""
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        for job in jobs:
            yield attempt(task, job)
        return
    import functools
    import multiprocessing

    if task.threads is None:
        task = replace(task, threads=max(1, cores() // workers))
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init)
    try:
        yield from pool.imap_unordered(functools.partial(_work, task), jobs)
        pool.close()                    # done: the workers exit on their own
    except BaseException:               # an error, Ctrl-C, or the caller stopped early
        pool.terminate()
        raise
    finally:
        pool.join()


_busy = False       # in a worker: whether a job is running (so an output may be half written)


def _work(task: Task, job: Job) -> tuple[Job, Done | str]:
    global _busy
    _busy = True
    try:
        return attempt(task, job)
    finally:
        _busy = False


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)          # the main process handles Ctrl-C
    signal.signal(signal.SIGTERM, _stop)


def _stop(signum: int, frame) -> None:
    """Stopped by the main process: mid-job, unwind (write_atomic then removes its temporary
    file); idle, just go."""
    if _busy:
        sys.exit(128 + signum)
    os._exit(128 + signum)


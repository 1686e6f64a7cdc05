"""Several inputs or a directory: one output each, a bad file is reported and skipped, the
exit code says whether any failed, and nothing partial is left behind."""

import pytest
from click.testing import CliRunner
from PIL import Image

from vaecodec.cli import main

from conftest import natural_image, run_cli


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_lines(result) -> list[str]:
    err = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert all(ln.startswith("vaecodec: error: ") for ln in lines), err
    assert "Traceback" not in err
    return lines


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        natural_image(40 + 8 * i, 24, seed=i).save(d / name)
    return d


def test_several_files_write_next_to_each(images):
    r = invoke("encode", images / "a.png", images / "b.png", "-q", "30")
    assert r.exit_code == 0, r.output
    assert (images / "a.vae").is_file() and (images / "b.vae").is_file()
    assert not (images / "c.vae").exists()
    assert "2 of 2 files encoded" in r.output and error_lines(r) == []


def test_directory_into_output_directory_and_back(images, tmp_path):
    (images / "notes.txt").write_text("not an image, not picked")
    out = tmp_path / "vae"
    r = invoke("encode", images, "-o", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["a.vae", "b.vae", "c.vae"]
    (out / "stray.png").write_bytes(b"not picked by decode")
    r = invoke("decode", out, "-o", tmp_path / "png")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["a.png", "b.png", "c.png"]
    assert Image.open(tmp_path / "png" / "c.png").size == (56, 24)


def test_bad_files_are_reported_and_skipped(images, tmp_path):
    (images / "b.png").write_bytes(b"truncated garbage")
    out = tmp_path / "out"
    r = invoke("encode", images / "a.png", images / "b.png", tmp_path / "missing.png",
               images / "c.png", "-o", out)
    assert r.exit_code == 1
    lines = error_lines(r)
    assert len(lines) == 2
    assert "b.png" in lines[0] and "cannot read" in lines[0]
    assert "missing.png" in lines[1]
    assert sorted(p.name for p in out.iterdir()) == ["a.vae", "c.vae"]   # no partial, no temp
    assert "2 of 4 files encoded, 2 failed" in r.output


def test_bad_vae_files_are_reported_and_skipped(images, tmp_path):
    vae = tmp_path / "vae"
    assert invoke("encode", images, "-o", vae, "--quiet").exit_code == 0
    data = (vae / "b.vae").read_bytes()
    (vae / "b.vae").write_bytes(data[: len(data) // 2])
    (vae / "d.vae").write_bytes(b"\x89VAE" + bytes(50))
    png = tmp_path / "png"
    png.mkdir()
    (png / "b.png").write_bytes(b"precious")
    r = invoke("decode", vae, "-o", png, "--quiet")
    assert r.exit_code == 1
    lines = error_lines(r)
    assert len(lines) == 2 and "b.vae" in lines[0] and "truncated" in lines[0]
    assert "d.vae" in lines[1]
    assert sorted(p.name for p in png.iterdir()) == ["a.png", "b.png", "c.png"]
    assert (png / "b.png").read_bytes() == b"precious"     # a failure never replaces a file


def test_two_inputs_for_one_output_are_not_overwritten(images, tmp_path):
    natural_image(20, 20).save(images / "a.jpg")
    out = tmp_path / "out"
    r = invoke("encode", images / "a.png", images / "a.jpg", "-o", out, "--quiet")
    assert r.exit_code == 1
    (line,) = error_lines(r)
    assert "a.jpg" in line and "a.png" in line and "skipped" in line
    assert [p.name for p in out.iterdir()] == ["a.vae"]


def test_empty_directory_is_a_failure(tmp_path):
    (tmp_path / "empty").mkdir()
    r = invoke("encode", tmp_path / "empty")
    assert r.exit_code == 1
    (line,) = error_lines(r)
    assert "no input files" in line


@pytest.mark.parametrize("args", [("-o", "-"), ()])
def test_stdin_and_stdout_only_with_a_single_input(images, args):
    r = invoke("encode", images / "a.png", "-", *args) if not args else \
        invoke("encode", images / "a.png", images / "b.png", *args)
    assert r.exit_code == 2
    assert "single input" in r.output


def test_output_must_be_a_directory_for_several_inputs(images, tmp_path):
    f = tmp_path / "file.vae"
    f.write_bytes(b"x")
    r = invoke("encode", images / "a.png", images / "b.png", "-o", f)
    assert r.exit_code == 2 and "not a directory" in r.output
    assert f.read_bytes() == b"x"


def test_single_input_keeps_its_meaning(images, tmp_path):
    r = invoke("encode", images / "a.png", "-o", tmp_path / "x.vae", "--quiet")
    assert r.exit_code == 0 and (tmp_path / "x.vae").is_file()
    existing = tmp_path / "dir"
    existing.mkdir()
    assert invoke("encode", images / "a.png", "-o", existing, "--quiet").exit_code == 0
    assert (existing / "a.vae").is_file()          # an existing directory: written into it
    r = invoke("encode", tmp_path / "nope.png")
    assert r.exit_code == 1 and "files encoded" not in r.output  # one file: no summary
    assert len(error_lines(r)) == 1


def test_real_process_exit_code_and_stderr(images, tmp_path):
    (images / "b.png").write_bytes(b"junk")
    r = run_cli("encode", images, "-o", tmp_path / "out")
    assert r.returncode == 1
    lines = error_lines(r)
    assert len(lines) == 1 and "b.png" in lines[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.vae", "c.vae"]


# -- jobs, threads, progress and the summary ---------------------------------------------------


def summary_line(output: str) -> str:
    (line,) = [ln for ln in output.splitlines() if " files " in ln]
    return line


def test_summary_line_counts_files_bytes_bpp_and_time(images, tmp_path):
    out = tmp_path / "vae"
    r = invoke("encode", images, "-o", out, "-q", "30")
    assert r.exit_code == 0, r.output
    line = summary_line(r.output)
    sizes = [(out / f"{n}.vae").stat().st_size for n in "abc"]
    pixels = [(40 + 8 * i) * 24 for i in range(3)]
    bpp = sum(8 * s / p for s, p in zip(sizes, pixels)) / 3
    assert line.startswith("3 of 3 files encoded; ")
    assert f"{sum(sizes)} bytes of .vae" in line and f"mean {bpp:.4f} bpp" in line
    assert line.endswith(" s")
    r = invoke("decode", out, "-o", tmp_path / "png")
    assert summary_line(r.output).startswith(f"3 of 3 files decoded; {sum(sizes)} bytes")


def test_jobs_run_in_worker_processes_and_report_each_failure(images, tmp_path):
    (images / "b.png").write_bytes(b"truncated garbage")
    natural_image(32, 32, seed=5).save(images / "d.png")
    out = tmp_path / "out"
    r = run_cli("encode", images, "-o", out, "-j", "2", "-q", "20")
    assert r.returncode == 1
    (line,) = error_lines(r)
    assert "b.png" in line and "cannot read" in line
    assert sorted(p.name for p in out.iterdir()) == ["a.vae", "c.vae", "d.vae"]  # no temp file
    stdout = r.stdout.decode()
    assert summary_line(stdout).startswith("3 of 4 files encoded, 1 failed; ")
    assert sum("->" in ln for ln in stdout.splitlines()) == 3
    one = tmp_path / "one"
    assert invoke("encode", images / "a.png", images / "c.png", images / "d.png", "-o", one,
                  "-q", "20", "--quiet").exit_code == 0
    for name in ("a.vae", "c.vae", "d.vae"):     # the workers' files are the in-process ones
        assert (one / name).read_bytes() == (out / name).read_bytes()
    r = run_cli("decode", out, "-o", tmp_path / "png", "-j", "3", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["a.png", "c.png", "d.png"]


def test_threads_is_torch_threads_for_the_call(images, monkeypatch):
    import torch

    import vaecodec
    from vaecodec import codec

    seen = []
    real = codec.encode_pixels

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(codec, "encode_pixels", spy)
    before = torch.get_num_threads()
    im = Image.open(images / "a.png")
    vaecodec.encode(im, 50, threads=1)
    assert seen == [1] and torch.get_num_threads() == before     # set for the call, restored
    assert invoke("encode", images / "a.png", "--threads", "1", "--quiet").exit_code == 0
    assert seen == [1, 1]
    assert invoke("encode", images / "a.png", "--threads", "0").exit_code == 2
    with pytest.raises(vaecodec.VaecodecError, match="threads"):
        vaecodec.encode(im, 50, threads=0)


def test_progress_bar_only_on_a_terminal(monkeypatch):
    from vaecodec import cli

    assert cli._progress_bar(3, "encoded", quiet=False) is None      # pytest: not a terminal
    monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: True, raising=False)
    assert cli._progress_bar(3, "encoded", quiet=True) is None
    bar = cli._progress_bar(3, "encoded", quiet=False)
    try:
        assert bar is not None and bar.total == 3 and bar.fp is not None
    finally:
        bar.close()

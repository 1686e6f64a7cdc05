"""The suite's fixtures keep one test's global torch state from leaking into the next."""

import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")

TESTS = '''
import torch

THREADS, RNG = torch.get_num_threads(), torch.get_rng_state()


def test_a_training_like_test_sets_threads_and_seed():
    torch.set_num_threads(THREADS + 1)      # more than the default, so a leak always shows
    torch.manual_seed(0)


def test_b_runs_with_the_state_of_before():
    assert torch.get_num_threads() == THREADS
    assert torch.equal(torch.get_rng_state(), RNG)
'''


def run_inner(tmp_path: Path, conftest: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_state.py").write_text(TESTS)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_state.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)


def test_thread_count_and_rng_are_restored_after_each_test(tmp_path):
    r = run_inner(tmp_path, CONFTEST.read_text())
    assert r.returncode == 0, r.stdout[-3000:]
    assert "2 passed" in r.stdout


def test_without_the_fixture_the_state_leaks(tmp_path):
    """The control: the same two tests fail without the suite's conftest."""
    r = run_inner(tmp_path, "")
    assert r.returncode == 1 and "1 failed, 1 passed" in r.stdout, r.stdout[-3000:]

"""Weights files: loading never runs code from them, a wrong file fails clearly, and a .vae
file finds its own weights by the hash it records."""

import json
import pickle
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import vaecodec
from vaecodec import weights
from vaecodec.cli import main
from vaecodec.errors import WeightsError, WeightsMismatchError
from vaecodec.model import VariableRateHyperprior

from conftest import natural_image


class Payload:
    """Unpickling this creates ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def one_line_error(result, *words):
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vaecodec: error:"), result.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def png(tmp_path):
    p = tmp_path / "in.png"
    natural_image(64, 48).save(p)
    return p


@pytest.fixture
def other_weights(tmp_path):
    """The shipped tensors under another model id: another file, so another hash."""
    src = weights.default_weights_path()
    out = tmp_path / "other.safetensors"
    save_file(load_file(str(src)), str(out),
              metadata={**weights.read_metadata(src), "model_id": "someone-else"})
    return out


def test_pickle_renamed_to_safetensors_is_not_executed(tmp_path, png):
    payload = pickle.dumps(Payload(tmp_path / "proof"))
    pickle.loads(payload)                       # the payload is live: it does create a file
    assert (tmp_path / "proof").exists()

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))
    with pytest.raises(WeightsError, match="evil.safetensors"):
        weights.load(evil)
    with pytest.raises(WeightsError):
        vaecodec.encode(natural_image(16, 16), model=evil)
    one_line_error(CliRunner().invoke(main, ["encode", str(png), "--model", str(evil)]),
                   "evil.safetensors")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pt"])
def test_torch_save_pickle_is_not_executed(tmp_path, png, name):
    evil = tmp_path / name
    torch.save({"g_a.0.weight": torch.zeros(1), "x": Payload(tmp_path / "pwned")}, evil)
    with pytest.raises(WeightsError, match="not a safetensors file"):
        weights.load(evil)
    one_line_error(CliRunner().invoke(main, ["encode", str(png), "--model", str(evil)]),
                   name)
    assert not (tmp_path / "pwned").exists()
    shutil.copy(evil, tmp_path / "copy.pt")     # torch.load reads *.safetensors safely itself
    torch.load(tmp_path / "copy.pt", weights_only=False)  # what an unsafe loader would do
    assert (tmp_path / "pwned").exists()


def small_model_file(path, meta_overrides=None, update=True, drop=None):
    m = VariableRateHyperprior(N=16, M=24)
    if update:
        m.update()
    state = {k: v.contiguous() for k, v in m.state_dict().items() if k != drop}
    meta = {"architecture": weights.ARCHITECTURE, "model_id": "tiny", "N": "16", "M": "24",
            "lambdas": json.dumps([round(float(v), 6) for v in m.lambdas])}
    meta.update(meta_overrides or {})
    save_file(state, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("overrides,update,drop,words", [
    ({"architecture": "ResNet50"}, True, None, "holds no vaecodec weights"),
    ({"N": "128", "M": "192"}, True, None, "does not fit"),
    ({"N": "100000000"}, True, None, "outside 1..512"),
    ({"lambdas": "5"}, True, None, "invalid metadata"),
    ({"lambdas": '["a", "b"]'}, True, None, "invalid metadata"),
    ({"lambdas": "[1]"}, True, None, "lambdas"),
    ({"N": "sixteen"}, True, None, "invalid metadata"),
    ({}, True, "g_s.0.weight", "does not fit"),
    ({}, False, None, "no CDF tables"),
])
def test_wrong_architecture_fails_clearly(tmp_path, png, overrides, update, drop, words):
    f = small_model_file(tmp_path / "wrong.safetensors", overrides, update, drop)
    with pytest.raises(WeightsError, match=words):
        weights.load(f)
    one_line_error(CliRunner().invoke(main, ["encode", str(png), "--model", str(f)]),
                   "wrong.safetensors")


def test_tensors_without_metadata(tmp_path):
    f = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(f))
    with pytest.raises(WeightsError, match="architecture: unknown"):
        weights.load(f)


def test_a_consistent_small_model_loads(tmp_path):
    """The checks above refuse wrong files, not other sizes of the right architecture."""
    loaded = weights.load(small_model_file(tmp_path / "tiny.safetensors"))
    assert (loaded.model.N, loaded.model.M, loaded.model_id) == (16, 24, "tiny")


def test_find_by_hash(tmp_path, other_weights):
    default = weights.default_weights_path()
    assert weights.find_by_hash(weights.file_hash(default)) == default
    h = weights.file_hash(other_weights)
    assert weights.find_by_hash(h) is None
    broken = tmp_path / "broken.safetensors"
    broken.symlink_to(tmp_path / "nowhere")
    assert weights.find_by_hash(h, [broken, default, other_weights]) == other_weights
    assert weights.find_by_hash(b"\0" * 8, [broken, default]) is None


def test_decode_finds_installed_weights_by_hash(tmp_path, monkeypatch, other_weights):
    data = vaecodec.encode(natural_image(64, 48), 50, model=other_weights)
    with pytest.raises(WeightsMismatchError) as e:
        vaecodec.decode(data)
    msg = str(e.value)
    assert "someone-else" in msg and weights.file_hash(other_weights).hex() in msg
    assert "--model" in msg

    installed = tmp_path / "installed"
    installed.mkdir()
    shutil.copy(weights.default_weights_path(), installed / weights.DEFAULT_WEIGHTS)
    shutil.copy(other_weights, installed / "someone-else.safetensors")
    monkeypatch.setattr(weights, "models_dir", lambda: installed)
    assert vaecodec.decode(data).size == (64, 48)
    assert vaecodec.decode(vaecodec.encode(natural_image(64, 48), 50)).size == (64, 48)


def test_given_model_that_does_not_match_names_both(tmp_path, other_weights):
    data = vaecodec.encode(natural_image(64, 48), 50)
    with pytest.raises(WeightsMismatchError) as e:
        vaecodec.decode(data, model=other_weights)
    msg = str(e.value)
    assert weights.load().model_id in msg and "someone-else" in msg
    assert weights.load().model_hash.hex() in msg
    assert weights.file_hash(other_weights).hex() in msg


def test_cli_decode_says_which_weights_it_needs(tmp_path, other_weights):
    f = tmp_path / "x.vae"
    f.write_bytes(vaecodec.encode(natural_image(64, 48), 50, model=other_weights))
    one_line_error(CliRunner().invoke(main, ["decode", str(f)]),
                   "someone-else", weights.file_hash(other_weights).hex())
    r = CliRunner().invoke(main, ["decode", str(f), "--model", str(other_weights), "--quiet"])
    assert r.exit_code == 0, r.output

"""Training runs, checkpoints, resumes and exports a file the codec can use (tiny and fast)."""

import pytest
import torch
from click.testing import CliRunner

import vaecodec
from vaecodec.cli import main
from vaecodec.train import TrainConfig, lr_at

from conftest import natural_image


def test_train_resume_export_encode(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, size in enumerate([(80, 72), (96, 64), (70, 140)]):
        natural_image(*size).save(data / f"img{i}.png")
    ck = tmp_path / "ck.pt"
    r = CliRunner()
    args = ["train", str(data), "--out", str(ck), "--crop", "64", "--batch-size", "2",
            "--threads", "1"]
    res = r.invoke(main, args + ["--steps", "2"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert torch.load(ck, weights_only=True)["step"] == 2
    res = r.invoke(main, args + ["--steps", "4", "--resume", str(ck)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "resumed" in res.output
    assert torch.load(ck, weights_only=True)["step"] == 4
    w = tmp_path / "mine.safetensors"
    res = r.invoke(main, ["export", str(ck), str(w), "--model-id", "mine"],
                   catch_exceptions=False)
    assert res.exit_code == 0, res.output
    im = natural_image(64, 48)
    data_vae = vaecodec.encode(im, 50, model=w)
    assert vaecodec.read_header(data_vae).model_id == "mine"
    assert vaecodec.decode(data_vae, model=w).size == (64, 48)


def test_train_needs_a_length(tmp_path):
    res = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "c.pt")])
    assert res.exit_code == 2 and "--steps" in res.output


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(data="", out="", steps=1000, warmup=100, lr=1e-4, lr_min=1e-5,
                      decay_frac=0.2)
    assert lr_at(cfg, 0, 0.0) < lr_at(cfg, 50, 0.05) < lr_at(cfg, 100, 0.1) == 1e-4
    assert lr_at(cfg, 700, 0.7) == 1e-4
    assert 1e-5 < lr_at(cfg, 900, 0.9) < 1e-4
    assert abs(lr_at(cfg, 1000, 1.0) - 1e-5) < 1e-12


def test_working_clock_does_not_count_a_stopped_process(monkeypatch):
    """A trainer stopped (SIGSTOP) for ten minutes to free the cores resumes its schedule
    where it was: the gap counts as MAX_GAP, not as ten minutes of training."""
    from vaecodec import train as train_mod

    now = [1000.0]
    monkeypatch.setattr(train_mod.time, "time", lambda: now[0])
    clock = train_mod.WorkingClock(start=300.0)
    now[0] += 2.5
    assert clock() == pytest.approx(302.5)
    now[0] += 600
    assert clock() == pytest.approx(302.5 + train_mod.WorkingClock.MAX_GAP)
    now[0] += 1.0
    assert clock() == pytest.approx(303.5 + train_mod.WorkingClock.MAX_GAP)


def test_train_turns_bf16_off_where_it_would_be_emulated(tmp_path, monkeypatch):
    """On a CPU without bfloat16 dot products autocast is many times slower than float32
    (18 s against 0.2 s for one convolution on an AVX2-only EPYC): the trainer says so and
    trains in float32, and the checkpoint records what it did."""
    from vaecodec import train as train_mod

    monkeypatch.setattr(train_mod, "bf16_is_fast", lambda dev: False)
    data = tmp_path / "data"
    data.mkdir()
    natural_image(80, 72).save(data / "img.png")
    ck = tmp_path / "ck.pt"
    res = CliRunner().invoke(main, ["train", str(data), "--out", str(ck), "--crop", "64",
                                    "--batch-size", "1", "--threads", "1", "--steps", "1"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "bf16 off" in res.output
    assert torch.load(ck, weights_only=True)["config"]["bf16"] is False


def test_export_records_the_total_training(tmp_path):
    """Weights trained in segments record every segment: an export adds the steps and hours
    of the weights a run started from (their metadata, or a checkpoint's counters) to the
    run's own, through --init-from and --resume alike, and keep what the starting weights
    say of their making (the context's own fit, and which file the run started from)."""
    from vaecodec import weights
    from vaecodec.model import VariableRateHyperprior

    init = tmp_path / "init.safetensors"
    weights.export(VariableRateHyperprior(), init, "init",
                   {"steps": "10", "train_hours": "0.50", "context_steps": "7"})
    lineage = {"context_steps": "7", "init_from": weights.file_hash(init).hex()}
    data = tmp_path / "data"
    data.mkdir()
    natural_image(80, 72).save(data / "img.png")
    r = CliRunner()

    def train(ck, *more):
        args = ["train", str(data), "--out", str(ck), "--crop", "64", "--batch-size", "1",
                "--threads", "1", *more]
        res = r.invoke(main, args, catch_exceptions=False)
        assert res.exit_code == 0, res.output

    def exported(ck) -> dict[str, str]:
        w = tmp_path / f"{ck.stem}.safetensors"
        res = r.invoke(main, ["export", str(ck), str(w)], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return weights.read_metadata(w)

    ck = tmp_path / "a.pt"
    train(ck, "--steps", "2", "--init-from", str(init))
    assert torch.load(ck, weights_only=True)["step"] == 2       # the schedule's own count
    meta = exported(ck)
    assert meta["steps"] == "12"
    assert 0.50 <= float(meta["train_hours"]) < 0.6
    assert lineage.items() <= meta.items()
    train(ck, "--steps", "3", "--resume", str(ck))
    meta = exported(ck)
    assert meta["steps"] == "13" and lineage.items() <= meta.items()
    b = tmp_path / "b.pt"                                   # from a checkpoint, not weights
    train(b, "--steps", "1", "--init-from", str(ck))
    meta = exported(b)
    assert meta["steps"] == "14" and lineage.items() <= meta.items()


def test_crops_are_drawn_by_area_and_leave_the_held_out_photos_out(tmp_path):
    """Every pixel equally likely: a photo three times the area of another gives three times
    the crops. The held-out photos (by name) never reach training."""
    import os
    import random

    import numpy as np

    from vaecodec.train import CropPool, held_out

    small, big = tmp_path / "a", tmp_path / "b"
    small.mkdir()
    big.mkdir()
    kept = [f"photo{i}.png" for i in range(100) if not held_out(f"photo{i}.png")]
    natural_image(64, 64).point(lambda v: 0).save(small / kept[0])
    natural_image(192, 64).point(lambda v: 255).save(big / kept[1])
    name = next(f"photo{i}.png" for i in range(1000) if held_out(f"photo{i}.png"))
    natural_image(64, 64).point(lambda v: 128).save(small / name)
    pool = CropPool(os.pathsep.join(map(str, (small, big))), 64, 0.0, hold_out=True)
    assert len(pool) == 2 and pool.pixels == 64 * 64 + 192 * 64
    x = pool.batch(2000, random.Random(0))
    means = x.mean((1, 2, 3)).numpy()
    assert not np.any(np.isclose(means, 128 / 255))          # the held-out photo
    assert 0.70 < float(np.mean(means > 0.5)) < 0.80           # 3/4 of the area
    assert len(CropPool(str(small), 64, 0.0, hold_out=False)) == 2


def test_straight_through_rate_is_what_rounding_pays():
    """``rate="ste"`` and ``"mixed"``: y's likelihoods are those of the rounded symbols (the
    bits the coder's float model prices, ``train_context.grouped_bits`` with rounding), while
    the noise term's are not; and the gradient reaches the analysis transform and the
    context."""
    import numpy as np

    from vaecodec import weights
    from vaecodec.train_context import grouped_bits, prior

    torch.manual_seed(0)
    model = weights.load(weights.default_weights_path(), fast=False).model
    model.train()
    model.entropy_bottleneck.eval()    # z rounded, as the coder has it: compare y alone
    x = torch.from_numpy(np.asarray(natural_image(64, 64), dtype=np.float32) / 255)
    x = x.permute(2, 0, 1)[None]
    level = torch.tensor([3.0])
    with torch.no_grad():
        ste_bits = float(-torch.log2(model(x, level, rate="ste")["likelihoods"]["y"]).sum())
        mixed = float(-torch.log2(model(x, level, rate="mixed")["likelihoods"]["y"]).sum())
    with torch.no_grad():
        p = prior(model, model.g_a(x), level)
        rounded = float(grouped_bits(model.context, p, noise=False).sum())
    assert ste_bits == pytest.approx(rounded, rel=1e-4)
    assert mixed == pytest.approx(rounded, rel=1e-4)
    with torch.no_grad():
        noise_bits = float(-torch.log2(model(x, level)["likelihoods"]["y"]).sum())
    assert noise_bits > 1.05 * rounded      # noise overprices the small-scale symbols
    model.requires_grad_(True)
    for rate in ("ste", "mixed"):
        model.zero_grad()
        loss = -torch.log2(model(x, level, rate=rate)["likelihoods"]["y"]).sum()
        loss.backward()
        assert model.g_a[0].weight.grad.abs().sum() > 0
        assert model.context.ep_n[0][0].weight.grad.abs().sum() > 0


def test_a_non_finite_batch_is_skipped_without_touching_the_weights(tmp_path, monkeypatch):
    """The skip decision stays on the device (fused Adam's found_inf): a NaN loss changes no
    weight and the log says how many batches were skipped."""
    from vaecodec import train as train_mod

    real = train_mod.rd_loss

    def nan_loss(*a, **k):
        r = real(*a, **k)
        return dict(r, loss=r["loss"] * float("nan"), objective=r["objective"] * float("nan"))

    monkeypatch.setattr(train_mod, "rd_loss", nan_loss)
    data = tmp_path / "data"
    data.mkdir()
    natural_image(80, 72).save(data / "img.png")
    ck = tmp_path / "ck.pt"
    res = CliRunner().invoke(main, ["train", str(data), "--out", str(ck), "--crop", "64",
                                    "--batch-size", "1", "--threads", "1", "--steps", "3",
                                    "--log-every", "3"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "3 of the last 3 batches skipped" in res.output
    state = torch.load(ck, weights_only=True)["model"]
    torch.manual_seed(0)                       # the trainer's seed: its initial weights
    fresh = train_mod.model_like(None).state_dict()
    for k in ("g_a.0.weight", "g_s.0.weight", "y_log_gain"):
        assert torch.equal(state[k], fresh[k]), k



def test_cost_power_weighs_each_crop_by_its_own_cost():
    """--cost-power p: the objective's gradient is each crop's cost gradient over cost^p; at
    1 that is log cost's, so the cheap low-rate crops count as much as the costly high ones,
    while the logged loss stays the plain mean."""
    from vaecodec.model import VariableRateHyperprior
    from vaecodec.train import rd_loss

    torch.manual_seed(0)
    model = VariableRateHyperprior(N=8, M=8).eval()     # eval: rounding, no noise draws
    x, level = torch.rand(2, 3, 64, 64), torch.tensor([0.0, 9.0])

    def run(i, p):
        model.zero_grad()
        res = rd_loss(model, x[i], level[i], False, cost_power=p)
        res["objective"].backward()
        return res["loss"], model.g_s[-1].weight.grad.clone()

    both = slice(0, 2)
    (loss0, g0), (loss1, g1) = run(both, 0.0), run(both, 1.0)
    (c_a, g_a), (c_b, g_b) = run(slice(0, 1), 0.0), run(slice(1, 2), 0.0)
    assert torch.allclose(loss0, loss1) and torch.allclose(loss0, (c_a + c_b) / 2)
    assert c_b > 5 * c_a                                # the top level's cost dwarfs the bottom's
    assert torch.allclose(g0, (g_a + g_b) / 2, rtol=1e-4, atol=1e-8)
    assert torch.allclose(g1, (g_a / c_a + g_b / c_b) / 2, rtol=1e-4, atol=1e-8)


def test_level_cost_scale_tracks_each_levels_mean_cost():
    """--cost-scale level: the scale a crop's cost is divided by is the running mean cost of
    its level, read at the level itself (not pulled towards the middle by the crops around
    it), interpolated between levels; a level not yet seen gives the crop's own cost."""
    from vaecodec.train import LevelCostScale, sample_levels

    torch.manual_seed(0)
    scale = LevelCostScale(6)
    first = scale(torch.tensor([2.5]), torch.tensor([7.0]))
    assert torch.equal(first, torch.tensor([7.0]))
    for _ in range(400):
        level = sample_levels(8, 6, 0.5)
        scale(level, 0.3 * torch.exp(0.6 * level) * torch.exp(0.05 * torch.randn(8)))
    got = scale(torch.tensor([0.0, 2.5, 5.0]), torch.ones(3))
    want = 0.3 * torch.exp(0.6 * torch.tensor([0.0, 2.5, 5.0]))
    assert torch.allclose(got, want, rtol=0.03), (got, want)

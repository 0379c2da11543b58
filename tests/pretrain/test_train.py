"""pretrain/train.py: `python -m pretrain` under a real 2-process torchrun (gloo, CPU) on tiny real
shards (identical replicas after every step, everything a run writes, wandb offline, one-line
config errors), and a run stopped half-way then resumed, which ends with the weights of an
uninterrupted one (one rank, in this process to save the interpreter start-up).

The faults (a kill while a checkpoint is written, a rank killed with SIGKILL under torchrun
--max-restarts, a diverging run, a full disk) are in tests/faults/."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from data.errors import UserError
from pretrain.checkpoint import LATEST, TRUNK_FILE, load_checkpoint, load_trunk
from pretrain.config import load_config
from pretrain.tracking import read_metrics
from pretrain.train import DebugOptions, train
from tests.pretrain_runs import REPO, job_env, make_shards, torchrun, write_config
from tests.shard_factory import with_vocab_sha256
from tests.pretrain.test_tracking import _read_wandb_run

TRAIN_KEYS = {"loss", "lr", "images", "epoch", "images_per_s", "data_wait", "grad_norm", "nonfinite_steps",
              "memory/max_rss_mb", "skipped_total", "replica_checks"}
EVAL_KEYS = {"eval/precision_at_1", "eval/recall_at_5", "eval/mAP", "eval/images"}


def _assert_ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]


@pytest.mark.slow
def test_two_rank_run_keeps_replicas_identical_and_writes_the_run_directory(tmp_path):
    train_shards, val_shards = make_shards(tmp_path)
    config = write_config(tmp_path / "run.yaml", train_shards, val_shards, tmp_path / "runs", "ddp",
                          optim={"grad_accum": 2}, eval={"every_images": 48},
                          tracking={"wandb": "offline", "log_every_steps": 2, "tags": ["test"]})
    env = job_env(WANDB_DIR=str(tmp_path / "wandb-home"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
                  WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"))
    done = torchrun(["--config", str(config), "--check-replicas"], env, timeout=240)
    _assert_ok(done)
    run_dir = tmp_path / "runs" / "ddp"
    rows = read_metrics(run_dir)
    train_rows = [r for r in rows if "loss" in r]
    # 96 images / (4 per rank x 2 ranks x 2 accumulated micro-batches) = 6 steps, logged every 2.
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    assert [r["images"] for r in train_rows] == [32, 64, 96]
    # Every step all-gathered a parameter checksum and found the ranks bit-identical.
    assert train_rows[-1]["replica_checks"] == 6
    for row in train_rows:
        assert TRAIN_KEYS <= set(row), TRAIN_KEYS - set(row)
        assert row["loss"] > 0 and row["grad_norm"] > 0 and row["images_per_s"] > 0 and 0 <= row["data_wait"] <= 1
        assert row["nonfinite_steps"] == 0 and row["skipped_total"] == 0
    # Peak 0.1 x 16 / 256, set after the first step (warm-up: 16 images); halved at 16 + 80/3 and
    # 16 + 2 x 80/3 images.
    assert [r["lr"] for r in train_rows] == pytest.approx([0.00625, 0.003125, 0.0015625])
    evals = [r for r in rows if "eval/mAP" in r]
    assert [r["step"] for r in evals] == [3, 6]  # at 48 images and at the end
    for row in evals:
        assert EVAL_KEYS <= set(row) and row["eval/images"] == 16 and 0 < row["eval/mAP"] <= 1
    assert any(r.get("plot/label_distribution") == "label_distribution.png" for r in rows)
    assert (run_dir / "label_distribution.png").stat().st_size > 1000

    state = load_checkpoint(run_dir / "checkpoint-latest.pt")
    assert state["images_seen"] == 96 and state["step"] == 6
    assert state["vocab_tags"] == [f"t{i}" for i in range(6)] and state["scaler"] is None
    assert state["config"]["optim"]["grad_accum"] == 2
    assert sorted(p.name for p in run_dir.glob("checkpoint-*.pt")) == [
        "checkpoint-64.pt", "checkpoint-96.pt", "checkpoint-latest.pt"]  # keep_last 2
    trunk, metadata = load_trunk(run_dir / TRUNK_FILE)
    assert not any(key.startswith("fc.") for key in trunk) and metadata["architecture"] == "resnext_tiny"
    assert torch.equal(trunk["layer4.0.conv3.weight"], state["model"]["layer4.0.conv3.weight"])
    assert (run_dir / "config.yaml").is_file()

    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    logged = _read_wandb_run(next(wandb_run.glob("run-*.wandb")))
    history_keys = set().union(*logged["history"])
    assert TRAIN_KEYS | EVAL_KEYS <= history_keys, (TRAIN_KEYS | EVAL_KEYS) - history_keys
    assert "plot/label_distribution/_type" in history_keys
    assert logged["summary"]["images_seen"] == 96 and "label_distribution_tv" in logged["summary"]
    assert logged["tags"] == ["test"] and logged["config"]["optim"]["grad_accum"] == 2
    images_per_s = train_rows[-1]["images_per_s"]
    print(f"2-process CPU run (resnext_tiny, 32 px, batch 4 x 2 ranks x 2 accum): {images_per_s:.1f} img/s")


def test_config_errors_are_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train: shards/\noptim:\n  lerning_rate: 0.1\n")
    done = subprocess.run([sys.executable, "-m", "pretrain", "--config", str(bad)], cwd=REPO, env=job_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {bad}: unknown key optim.lerning_rate (did you mean optim.base_lr?)"]


@pytest.mark.parametrize("overrides, message", [
    (["optim.total_images=lots"], r"^error: override 'optim.total_images=lots': .*must be an integer"),
    (["data.train=/nonexistent/shards"], r"^error: .*/nonexistent/shards.* does not exist"),
    pytest.param(["precision.dtype=float16", "precision.autocast=true"],
                 r"^error: precision.dtype=float16 needs a CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="float16 is valid with CUDA")),
])
def test_user_errors_from_main_are_one_line(tmp_path, capsys, overrides, message):
    from pretrain.__main__ import main

    train_shards, _ = make_shards(tmp_path)
    config = write_config(tmp_path / "run.yaml", train_shards, None, tmp_path / "runs", "bad", data={"workers": 0})
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config), *overrides])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert re.search(message, lines[0]), lines[0]


# -- resume ---------------------------------------------------------------------------------------
# Same seed, same data stream, same arithmetic on one CPU thread: the resumed run is expected to be
# bit-identical; the stated tolerance leaves room for a BLAS that is not.
TOLERANCE = 1e-6


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_stop_at_half_then_resume_matches_an_uninterrupted_run(tmp_path, one_thread):
    shards, _ = make_shards(tmp_path)
    budget = {"total_images": 128, "warmup_images": 16, "decay_steps": 2}
    straight = write_config(tmp_path / "a.yaml", shards, None, tmp_path / "runs", "straight", optim=budget)
    split = write_config(tmp_path / "b.yaml", shards, None, tmp_path / "runs", "split", optim=budget)
    train(load_config(straight))
    # 64 images = 16 steps of 4 = two whole loader epochs of 32 images: the resumed stream is the same.
    stopped = train(load_config(split), DebugOptions(stop_after_images=64))
    assert stopped == {"images_seen": 64, "stopped_early": True}
    half = load_checkpoint(tmp_path / "runs" / "split" / LATEST)
    assert half["images_seen"] == 64 and half["step"] == 16
    assert half["data_position"] == {"epoch": 1, "batch": 8, "resume_epoch": 2}
    assert half["scheduler"]["images_seen"] == 64
    resumed = train(load_config(split))
    assert resumed["images_seen"] == 128 and resumed["steps"] == 32

    a = load_checkpoint(tmp_path / "runs" / "straight" / LATEST)
    b = load_checkpoint(tmp_path / "runs" / "split" / LATEST)
    assert _max_difference(a["model"], b["model"]) <= TOLERANCE
    momentum_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert max((x - y).abs().max().item() for x, y in zip(momentum_a, momentum_b)) <= TOLERANCE
    assert a["scheduler"] == b["scheduler"]
    # The resumed run's metrics continue the stopped one's, step for step.
    rows = [(r["step"], r["images"]) for r in read_metrics(tmp_path / "runs" / "split") if "loss" in r]
    assert rows == [(step, step * 4) for step in range(2, 33, 2)]
    losses = [r["loss"] for r in read_metrics(tmp_path / "runs" / "straight") if "loss" in r]
    assert losses == pytest.approx([r["loss"] for r in read_metrics(tmp_path / "runs" / "split") if "loss" in r],
                                   abs=TOLERANCE)


# -- model.compile --------------------------------------------------------------------------------
# Inductor builds its CPU kernels with the system C++ compiler ($CXX, else g++ on Linux).
CXX = os.environ.get("CXX", "g++")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(CXX) is None, reason=f"model.compile on CPU needs a C++ compiler ({CXX} not on PATH): "
                    "torch.compile's inductor backend builds its CPU kernels with it")
def test_compiled_run_trains_like_the_eager_one(tmp_path, one_thread):
    """model.compile=true through the entry point, compiled for real (inductor, C++ kernels): the
    same 4 steps as eager on the same stream, each logged loss finite and within 1e-3 of eager's."""
    shards, _ = make_shards(tmp_path)
    losses = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        config = write_config(tmp_path / f"{name}.yaml", shards, None, tmp_path / "runs", name,
                              data={"workers": 0}, model={"name": "resnext_micro", "compile": compiled},
                              optim={"total_images": 16, "warmup_images": 0, "base_lr": 1.0, "decay_steps": 0},
                              checkpoint={"every_images": 10_000}, tracking={"log_every_steps": 1})
        train(load_config(config))
        losses[name] = [r["loss"] for r in read_metrics(tmp_path / "runs" / name) if "loss" in r]
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert (graphs > 0) == compiled, (name, dict(torch._dynamo.utils.counters["stats"]))
    assert len(losses["compiled"]) == len(losses["eager"]) == 4
    assert all(math.isfinite(loss) for loss in losses["compiled"])
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-3)


# -- a weighted mixture of shard sets ------------------------------------------------------------

@pytest.mark.slow
def test_a_mixture_trains_checkpoints_and_resumes_and_its_vocabulary_is_checked(tmp_path, one_thread, capsys):
    """data.train as a list of weighted sets: the resolved config.yaml keeps the list, a run stopped
    half-way resumes from it, and resuming onto sets of another vocabulary is one error line."""
    first, _ = make_shards(tmp_path / "a")
    second, _ = make_shards(tmp_path / "b")
    mixture = [{"path": str(with_vocab_sha256(first)), "weight": 3}, {"path": str(with_vocab_sha256(second)), "weight": 1}]
    config = write_config(tmp_path / "mix.yaml", first, None, tmp_path / "runs", "mix",
                          data={"train": mixture}, optim={"total_images": 64, "warmup_images": 16, "decay_steps": 2})
    assert train(load_config(config), DebugOptions(stop_after_images=32))["stopped_early"]
    assert re.search(rf"mixing at shard level: {first} \(train\) 75.0%, {second} \(train\) 25.0% of the images "
                     r"\(one corpus of their union would give \d+\.\d% / \d+\.\d% at sampling.q=0.5\)",
                     capsys.readouterr().out)
    resolved = load_config(tmp_path / "runs" / "mix" / "config.yaml")
    assert [(s.path, s.weight) for s in resolved.data.train] == [(str(first), 3.0), (str(second), 1.0)]
    summary = train(resolved)
    assert summary["images_seen"] == 64 and 0 <= summary["label_distribution_tv"] < 1
    assert load_checkpoint(tmp_path / "runs" / "mix" / LATEST)["config"]["data"]["train"] == mixture
    other, _ = make_shards(tmp_path / "c")
    info = json.loads((other / "info.json").read_text())
    info["vocab"].update(sha256="cd" * 32, tags=[f"other{i}" for i in range(len(info["vocab"]["tags"]))])
    (other / "info.json").write_text(json.dumps(info))
    moved = load_config(config, ["optim.total_images=96", f"data.train=[{{path: {other}}}]"])
    with pytest.raises(UserError, match=f"was trained on the vocabulary .* but data.train={other} \\(train\\) "
                                        "carries .*label 0 is 't0' there and 'other0' here"):
        train(moved)

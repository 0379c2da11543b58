"""NaN/inf loss: the step is skipped and counted, and changes nothing — not the weights, not the
momentum, not the BN running statistics its forward pass touched; after ``optim.max_nonfinite_steps``
in a row the run writes a checkpoint (holding the weights from before the bad steps, every number
finite) and stops with one clear error line. A run with no finite step at all stops the same way
at its end (pretraining) or its first epoch's end (fine-tuning) instead of exporting the weights it
started from; NaN weights are refused where they enter (a fine-tuning ``init``)."""
from __future__ import annotations

import pytest
import torch

from data.loader.labels import pack_labels
from pretrain.__main__ import main
from pretrain.checkpoint import LATEST, TRUNK_FILE, load_checkpoint, save_checkpoint
from pretrain.config import load_config
from pretrain.engine import Engine, Progress, StepSettings
from pretrain.loss import create_loss
from pretrain.model import create_model, param_groups
from pretrain.schedule import ImageScheduler, LRSchedule
from pretrain.train import DebugOptions, train
from tests.faults.run_checks import one_error_line, train_rows
from tests.pretrain_runs import make_shards, write_config
from tests.transfer_factory import colour_task
from transfer.__main__ import main as transfer_main


def _engine(seed: int = 0) -> tuple[Engine, torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = create_model("resnext_tiny", 6)
    optimizer = torch.optim.SGD(param_groups(model, 1e-4), lr=0.0, momentum=0.9, nesterov=True, fused=True)
    scheduler = ImageScheduler(optimizer, LRSchedule(peak_lr=0.1, total_images=10_000))
    engine = Engine(model, optimizer, create_loss("softmax"), StepSettings(6), torch.device("cpu"), scheduler)
    return engine, model, optimizer


def _batch(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return {"image": images, "labels": pack_labels([[0], [1, 2], [3], [4, 5]]), "keys": list("abcd")}


def _snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    state.update({f"momentum.{i}": s["momentum_buffer"].clone() for i, s in enumerate(optimizer.state.values())})
    return state


def test_a_non_finite_step_is_skipped_counted_and_leaves_weights_momentum_and_bn_statistics_alone():
    engine, model, optimizer = _engine()
    progress = Progress()
    engine.step([_batch(0)], progress, 4)  # a finite step: momentum buffers exist from here on
    head = model.fc.weight
    finite_head = head.detach().clone()
    with torch.no_grad():
        head.mul_(1e38)  # the logits overflow: the loss and every gradient become non-finite
    before = _snapshot(model, optimizer)
    engine.step([_batch(1)], progress, 4)
    after = _snapshot(model, optimizer)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    # The forward pass did update every BN's running statistics; the skip put them back.
    assert changed == [], f"a skipped step changed {changed}"
    stats = engine.read_stats()
    assert stats["nonfinite_steps"] == 1 and stats["consecutive_nonfinite"] == 1
    assert progress.step == 2 and progress.images_seen == 8  # counted as a step: the schedule moves on
    with torch.no_grad():
        head.copy_(finite_head)
    engine.step([_batch(2)], progress, 4)
    stats = engine.read_stats()
    assert stats["nonfinite_steps"] == 1 and stats["consecutive_nonfinite"] == 0  # a finite step ends the streak
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


def test_a_non_finite_first_step_leaves_no_trace_in_the_momentum():
    """Skipped before any momentum exists: the next finite step gives exactly the weights and
    momentum of a run that never saw the bad batch (fused SGD would otherwise start from the
    uninitialised buffers it allocates on its first step)."""
    def constant_lr(engine: Engine) -> None:
        engine.scheduler = ImageScheduler(engine.optimizer, LRSchedule(peak_lr=0.1, total_images=10_000,
                                                                       decay_steps=0))
        engine.scheduler.step(0)  # lr 0.1 from the first step on, in both runs

    skipped, skipped_model, skipped_optimizer = _engine()
    clean, clean_model, clean_optimizer = _engine()
    constant_lr(skipped)
    constant_lr(clean)
    head = skipped_model.fc.weight
    finite_head = head.detach().clone()
    with torch.no_grad():
        head.mul_(1e38)
    skipped.step([_batch(1)], Progress(), 4)
    assert skipped.read_stats()["nonfinite_steps"] == 1
    with torch.no_grad():
        head.copy_(finite_head)
    skipped.step([_batch(0)], Progress(), 4)
    clean.step([_batch(0)], Progress(), 4)
    a, b = _snapshot(skipped_model, skipped_optimizer), _snapshot(clean_model, clean_optimizer)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def _diverging_config(tmp_path, **optim):
    shards, _ = make_shards(tmp_path)
    # lr 1e12 after a warm-up over the first step's 4 images (that step runs at lr 0): the first
    # steps are finite and throw the weights so far that every later forward overflows; logged
    # every step, so the streak is read as soon as it reaches the limit.
    return write_config(tmp_path / "diverge.yaml", shards, None, tmp_path / "runs", "diverge",
                        optim={"base_lr": 1e12, "warmup_images": 4, "total_images": 400, **optim},
                        checkpoint={"every_images": 10_000}, tracking={"log_every_steps": 1})


@pytest.mark.slow
def test_a_diverging_run_stops_after_n_in_a_row_with_one_line_and_a_finite_checkpoint(tmp_path, one_thread, capsys):
    config = _diverging_config(tmp_path, max_nonfinite_steps=3)
    with pytest.raises(SystemExit) as stopped:
        main(["--config", str(config)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.rstrip().splitlines()[-1]
    assert error.startswith("error: training diverged: the last 3 optimiser steps had a non-finite loss or "
                            "gradient (step 5, 20 images)")
    assert error.endswith("lower optim.base_lr, set optim.clip_grad, or lengthen optim.warmup_images, then resume")
    run_dir = tmp_path / "runs" / "diverge"
    rows = train_rows(run_dir)
    assert [r["nonfinite_steps"] for r in rows] == [0, 0, 1, 2, 3]  # skipped and counted, step by step
    state = load_checkpoint(run_dir / LATEST)
    assert state["images_seen"] == 20 and state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # The checkpoint holds exactly the weights, BN statistics and momentum of step 2, the last finite one.
    finite = write_config(tmp_path / "finite.yaml", tmp_path / "train", None, tmp_path / "runs", "finite",
                          optim={"base_lr": 1e12, "warmup_images": 4, "total_images": 400},
                          checkpoint={"every_images": 10_000})
    train(load_config(finite), DebugOptions(stop_after_images=8))
    reference = load_checkpoint(tmp_path / "runs" / "finite" / LATEST)
    assert all(torch.equal(state["model"][k], reference["model"][k]) for k in reference["model"])
    momentum = [(s["momentum_buffer"], r["momentum_buffer"])
                for s, r in zip(state["optimizer"]["state"].values(), reference["optimizer"]["state"].values())]
    assert all(torch.equal(a, b) for a, b in momentum)


@pytest.mark.slow
def test_the_command_line_flag_overrides_the_config_key(tmp_path, one_thread, capsys):
    config = _diverging_config(tmp_path, max_nonfinite_steps=50)
    with pytest.raises(SystemExit):
        main(["--config", str(config), "--max-nonfinite-steps", "2"])
    assert "the last 2 optimiser steps" in capsys.readouterr().err.rstrip().splitlines()[-1]



@pytest.mark.slow
def test_a_run_with_no_finite_step_stops_with_one_line_instead_of_exporting(tmp_path, one_thread, capsys):
    # Finite weights whose every forward overflows (the head x 1e38), resumed for fewer steps than
    # optim.max_nonfinite_steps: before, every step was skipped and the run exported them as trained.
    shards, _ = make_shards(tmp_path)
    config = write_config(tmp_path / "run.yaml", shards, None, tmp_path / "runs", "never", data={"workers": 0},
                          optim={"total_images": 48})
    train(load_config(config), DebugOptions(stop_after_images=32))
    run_dir = tmp_path / "runs" / "never"
    state = load_checkpoint(run_dir / LATEST)
    state["model"]["fc.weight"] *= 1e38
    save_checkpoint(run_dir, state, 32, keep_last=2)
    line = one_error_line(main, ["--config", str(config)], capsys)
    assert line.startswith("error: training diverged: every optimiser step of this run (4, since step 8) had a "
                           "non-finite loss or gradient (step 12, 48 images); nothing was exported; the weights are "
                           f"still those of {run_dir / LATEST}"), line
    assert not (run_dir / TRUNK_FILE).exists()
    # No checkpoint of the unchanged weights at the budget: the same command again stops again,
    # rather than resume at its budget and export them.
    assert load_checkpoint(run_dir / LATEST)["images_seen"] == 32
    assert one_error_line(main, ["--config", str(config)], capsys) == line


def _finetune_argv(tmp_path, weights, name: str) -> list[str]:
    from tests.transfer.test_transfer_finetune import RECIPE, SMALL  # noqa: PLC0415

    train_dir, val_dir = tmp_path / "train", tmp_path / "val"
    return ["finetune", "--config", RECIPE, f"run.dir={tmp_path / 'runs'}", f"run.name={name}", *SMALL,
            f"init={weights}", f"data.train={train_dir}", f"data.val={val_dir}", "finetune.epochs=2"]


@pytest.mark.slow
def test_fine_tuning_from_nan_weights_stops_with_one_line_and_writes_no_model(tmp_path, one_thread, capsys):
    _, _, weights = colour_task(tmp_path, 8, 3, model="resnext_tiny")
    state = torch.load(weights, weights_only=True)
    state["layer2.0.conv1.weight"][0, 0] = float("nan")
    torch.save(state, weights)
    line = one_error_line(transfer_main, _finetune_argv(tmp_path, weights, "nan"), capsys)
    assert line == (f"error: init={weights}: holds non-finite weights (NaN or inf in 1 tensors, e.g. "
                    "layer2.0.conv1.weight); training or evaluating from them cannot give anything finite")
    assert not list((tmp_path / "runs").rglob("*.safetensors")) and not list((tmp_path / "runs").rglob("*.pt"))


@pytest.mark.slow
def test_fine_tuning_with_no_finite_step_stops_with_one_line_and_writes_no_model(tmp_path, one_thread, capsys):
    # Finite weights that overflow every forward (every stem weight 3e38): each step is skipped; the
    # first epoch's end, with no finite step since the start, stops the run before any model file.
    _, _, weights = colour_task(tmp_path, 8, 3, model="resnext_tiny")
    state = torch.load(weights, weights_only=True)
    state["conv1.weight"].fill_(3e38)
    torch.save(state, weights)
    line = one_error_line(transfer_main, _finetune_argv(tmp_path, weights, "overflow"), capsys)
    assert line.startswith("error: fine-tuning diverged: every optimiser step of this run (3) had a non-finite loss "
                           "or gradient (epoch 1, step 3); nothing of this epoch was saved"), line
    assert not list((tmp_path / "runs").rglob("*.safetensors")) and not list((tmp_path / "runs").rglob("*.pt"))

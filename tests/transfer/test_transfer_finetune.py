"""transfer finetune end to end: learning, per-epoch evaluation, best/last model files that evaluate
loads, and a resumed run that equals an uninterrupted one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from data.loader.labels import multi_hot_targets, pack_labels
from pretrain.tracking import read_metrics
from tests.transfer_factory import colour_task
from transfer.__main__ import main
from transfer.config import FinetuneConfig
from transfer.finetune import SmoothedCrossEntropy, lr_schedule

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "configs/transfer/cpu_demo_finetune.yaml")
# resnext_tiny rather than the demo recipe's resnext_micro: its 2,048 features learn the colours in
# the two epochs the test affords.
SMALL = ["model.name=resnext_tiny", "data.image_size=32", "data.resize_size=36", "data.workers=0", "finetune.batch_size=8",
         "finetune.warmup_epochs=0.5", "finetune.base_lr=0.8"]


@pytest.mark.parametrize("classes", [2, 12, 1000])
def test_smoothed_loss_equals_torch_cross_entropy_with_label_smoothing(classes):
    generator = torch.Generator().manual_seed(classes)
    for smoothing in (0.0, 0.05, 0.1, 0.2, 0.5):
        for _ in range(5):
            logits = (torch.randn(32, classes, generator=generator) * 4).requires_grad_()
            targets = torch.randint(0, classes, (32,), generator=generator)
            # The rows the engine builds from fine-tuning's batches: packed one-label lists -> one-hot.
            rows = multi_hot_targets(pack_labels([[t] for t in targets.tolist()]), classes, torch.device("cpu"))
            ours = SmoothedCrossEntropy(smoothing)(logits, rows)
            (grad,) = torch.autograd.grad(ours, logits)
            reference = F.cross_entropy(logits, targets, label_smoothing=smoothing)
            (expected,) = torch.autograd.grad(reference, logits)
            assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
            assert (grad - expected).abs().max() <= 1e-6 * expected.abs().max()


def test_schedule_counts_whole_steps_of_each_epoch():
    schedule = lr_schedule(FinetuneConfig(epochs=4, warmup_epochs=1, base_lr=0.1, schedule="cosine"), 100, 32)
    assert (schedule.total_images, schedule.warmup_images) == (4 * 96, 96)  # 3 steps of 32 per epoch
    assert schedule.peak_lr == pytest.approx(0.1 * 32 / 256)
    assert schedule.lr_at(96) == pytest.approx(schedule.peak_lr) and schedule.lr_at(4 * 96) == pytest.approx(0.0)


def test_a_warm_up_that_rounds_to_the_whole_run_ends_one_image_before_it():
    # The config keeps warmup_epochs < epochs; 0.999 of one 64-image epoch still rounds to 64.
    schedule = lr_schedule(FinetuneConfig(epochs=1, warmup_epochs=0.999, schedule="cosine"), 64, 64)
    assert (schedule.total_images, schedule.warmup_images) == (64, 63)
    assert schedule.lr_at(64) == pytest.approx(0.0, abs=1e-12)


def _finetune(tmp_path: Path, name: str, *overrides: str) -> Path:
    main(["finetune", "--config", RECIPE, f"run.dir={tmp_path / 'runs'}", f"run.name={name}", *SMALL, *overrides])
    return tmp_path / "runs" / name


def test_finetune_learns_evaluates_every_epoch_and_resumes_exactly(tmp_path):
    train, val, weights = colour_task(tmp_path, 12, 5, model="resnext_tiny")
    common = [f"init={weights}", f"data.train={train}", f"data.val={val}"]

    full = _finetune(tmp_path, "full", *common, "finetune.epochs=2", "finetune.ema_decay=0.9")
    rows = [r for r in read_metrics(full) if "val/top1" in r]
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_ema/top1" in r for r in rows)
    assert rows[-1]["images"] == 2 * 32  # 36 images, batch 8: 4 full steps per epoch
    assert rows[-1]["val/top1"] >= 80.0, "three colours are learned in two epochs"
    summary = json.loads((full / "summary.json").read_text())
    assert summary["finetune/best_top1"] == max(r["val/top1"] for r in rows)
    for name in ("model-last.safetensors", "model-best.safetensors", "model-ema.safetensors", "checkpoint-latest.pt"):
        assert (full / name).is_file(), name

    main(["evaluate", "--config", str(REPO / "configs/transfer/cpu_demo_eval.yaml"), f"init={full / 'model-best.safetensors'}",
          f"data.val={val}", f"run.dir={tmp_path / 'runs'}", "run.name=ev", "data.image_size=32", "data.resize_size=36",
          "data.workers=0", "model.name=resnext_tiny"])
    assert json.loads((tmp_path / "runs" / "ev" / "eval.json").read_text())["top1"] == summary["finetune/best_top1"]

    # Stopped after one epoch, then the same command resumes from checkpoint-latest.pt: same weights.
    main(["finetune", "--stop-after-epochs", "1", "--config", RECIPE, f"run.dir={tmp_path / 'runs'}", "run.name=resumed",
          *SMALL, *common, "finetune.epochs=2", "finetune.ema_decay=0.9"])
    resumed = _finetune(tmp_path, "resumed", *common, "finetune.epochs=2", "finetune.ema_decay=0.9")
    a = safetensors.torch.load_file(str(full / "model-last.safetensors"))
    b = safetensors.torch.load_file(str(resumed / "model-last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "resuming reproduces the uninterrupted run bit for bit"
    assert [r["epoch"] for r in read_metrics(resumed) if "val/top1" in r] == [1, 2]
    ema_a = safetensors.torch.load_file(str(full / "model-ema.safetensors"))
    ema_b = safetensors.torch.load_file(str(resumed / "model-ema.safetensors"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a), "the EMA is checkpointed and resumed too"


def test_finetune_on_real_hymenoptera_photos(tmp_path, shared_data):
    root = shared_data / "hymenoptera" / "hymenoptera_data"
    run = _finetune(tmp_path, "hym", "init=null", f"data.train={root / 'train'}", f"data.val={root / 'val'}",
                    "finetune.epochs=1", "finetune.batch_size=32")
    (row,) = [r for r in read_metrics(run) if "val/top1" in r]
    assert row["images"] == 7 * 32 and 0.0 <= row["val/top1"] <= 100.0 and row.get("skipped/corrupt") is None
    assert json.loads((run / "summary.json").read_text())["finetune/best_top1"] == row["val/top1"]

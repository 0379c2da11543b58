"""The recipes in configs/: they load, say what they are for, and hold the invariants a recipe must
whatever its numbers: the schedule fits in the budget (warm-up shorter than the run, step decays
inside it, a checkpoint and an evaluation before the end), the learning rate follows the linear
scaling rule base_lr x global batch / 256 at any world size, the CPU recipes run without a GPU, and
every key a recipe sets is documented (docs/config.md for pretraining, docs/transfer.md for transfer).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pretrain.config import PretrainConfig, load_config
from pretrain.schedule import LRSchedule
from transfer.config import TransferConfig
from transfer.finetune import lr_schedule

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = sorted((REPO / "configs" / "pretrain").glob("*.yaml"))
TRANSFER = sorted((REPO / "configs" / "transfer").glob("*.yaml"))
WORLD_SIZES = (1, 2, 8, 64)
# Fine-tuning schedules are counted in images of the training set: ImageNet-1k's, and a small one.
TRAIN_IMAGES = (1_281_167, 240)


def _name(path: Path) -> str:
    return path.name


def _leaf_keys(mapping: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            keys.extend(_leaf_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def test_the_recipes_the_docs_name_exist():
    assert {"resnext101_32x8d_yfcc_in1k.yaml", "resnext101_32x16d_yfcc_in1k.yaml", "resnext101_32x8d_yfcc_17k.yaml",
            "resnext101_32x8d_single_gpu.yaml", "cpu_demo.yaml"} <= {p.name for p in PRETRAIN}
    assert {"cpu_demo_finetune.yaml", "cpu_demo_linear.yaml", "cpu_demo_eval.yaml",
            "resnext101_32x8d_in1k_finetune.yaml", "wsl_32x8d_eval.yaml"} <= {p.name for p in TRANSFER}


@pytest.mark.parametrize("recipe", PRETRAIN + TRANSFER, ids=_name)
def test_every_recipe_loads_and_opens_with_what_it_is_for(recipe: Path):
    schema = PretrainConfig if recipe.parent.name == "pretrain" else TransferConfig
    assert isinstance(load_config(recipe, [], schema=schema), schema)
    assert recipe.read_text().startswith("#"), "a recipe opens with a comment: what it reproduces, the hardware"


@pytest.mark.parametrize("recipe", PRETRAIN, ids=_name)
def test_pretraining_schedule_fits_in_the_budget_and_scales_the_lr_linearly(recipe: Path):
    config = load_config(recipe, [])
    optim = config.optim
    assert 0 <= optim.warmup_images < optim.total_images
    assert optim.reference_batch == 256, "base_lr is quoted per 256 images, as in Goyal et al. and the paper"
    for world_size in WORLD_SIZES:
        global_batch = config.data.batch_size * world_size * optim.grad_accum
        schedule = LRSchedule.from_config(optim, global_batch)
        assert schedule.peak_lr == pytest.approx(optim.base_lr * global_batch / 256)
        assert schedule.total_images == optim.total_images and schedule.warmup_images == optim.warmup_images
        if optim.schedule == "step":
            points = schedule.decay_points()
            assert len(points) == optim.decay_steps
            assert all(optim.warmup_images < point < optim.total_images for point in points)
        assert schedule.lr_at(optim.warmup_images) == pytest.approx(schedule.peak_lr)
    # A restart loses less than the whole run, and the run is evaluated before its end.
    assert config.checkpoint.every_images < optim.total_images
    if config.eval.every_images is not None:
        assert config.eval.every_images <= optim.total_images


@pytest.mark.parametrize("recipe", [p for p in TRANSFER if "finetune" in p.name], ids=_name)
def test_finetuning_schedule_fits_in_the_budget_and_scales_the_lr_linearly(recipe: Path):
    ft = load_config(recipe, [], schema=TransferConfig).finetune
    assert 0 <= ft.warmup_epochs < ft.epochs
    assert ft.reference_batch == 256
    for world_size in WORLD_SIZES:
        global_batch = ft.batch_size * world_size
        for train_images in TRAIN_IMAGES:
            if train_images < global_batch:
                continue  # fine-tuning refuses a training set smaller than one global batch
            schedule = lr_schedule(ft, train_images, global_batch)
            assert schedule.peak_lr == pytest.approx(ft.base_lr * global_batch / 256)
            assert 0 <= schedule.warmup_images < schedule.total_images
            if ft.schedule == "step":
                assert all(schedule.warmup_images < p < schedule.total_images for p in schedule.decay_points())


@pytest.mark.parametrize("recipe", [p for p in PRETRAIN + TRANSFER if p.name.startswith("cpu_")], ids=_name)
def test_cpu_recipes_need_no_gpu(recipe: Path):
    schema = PretrainConfig if recipe.parent.name == "pretrain" else TransferConfig
    config = load_config(recipe, [], schema=schema)
    assert config.dist.backend == "gloo"
    assert not (config.precision.autocast and config.precision.dtype == "float16"), "float16 needs CUDA"
    if schema is PretrainConfig:
        assert config.data.decode == "cpu" and not config.data.pin_memory and not config.dist.sync_bn


@pytest.mark.parametrize("recipe", PRETRAIN + TRANSFER, ids=_name)
def test_every_key_a_recipe_sets_is_documented(recipe: Path):
    docs = (REPO / "docs" / ("config.md" if recipe.parent.name == "pretrain" else "transfer.md")).read_text()
    keys = _leaf_keys(yaml.safe_load(recipe.read_text()))
    assert keys
    undocumented = [key for key in keys if f"| `{key}` |" not in docs]
    assert not undocumented, f"{recipe.name}: {undocumented} not in the key reference"


def test_wsl_eval_recipe_states_the_published_figure():
    assert "82.2" in (REPO / "configs" / "transfer" / "wsl_32x8d_eval.yaml").read_text()

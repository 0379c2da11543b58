"""pretrain/config.py: schema, YAML loading, overrides, one-line errors, resolved config, reference docs."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from data.errors import UserError
from pretrain.config import (CONFIG_FILE, PretrainConfig, all_keys, config_from_dict, config_reference,
                             config_to_dict, load_config, option, save_resolved, section)

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(*args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "a config error must be one line"
    return message


MINIMAL = "data:\n  train: shards/\n"


def test_defaults_match_the_paper_recipe():
    config = load_config(None, ["data.train=s"])
    o = config.optim
    assert (o.base_lr, o.momentum, o.nesterov, o.weight_decay, o.decay_factor) == (0.1, 0.9, True, 1e-4, 0.5)
    assert config.data.sampling.q == 0.5 and config.loss.name == "softmax"
    assert o.peak_lr(8064) == pytest.approx(0.1 * 8064 / 256)


@pytest.mark.parametrize("extra, expected", [
    # Unknown keys: the full dotted key and the closest valid spelling (an alias, a key of the same
    # section, or the same name in another section).
    ("optim:\n  lerning_rate: 0.3\n", "unknown key optim.lerning_rate (did you mean optim.base_lr?)"),
    ("  sampling:\n    qq: 0.5\n", "unknown key data.sampling.qq (did you mean data.sampling.q?)"),
    ("optim:\n  seed: 3\n", "unknown key optim.seed (did you mean run.seed?)"),
    ("optimizer:\n  base_lr: 3\n", "unknown key optimizer (did you mean optim?)"),
    # Wrong types: the key and the value as read.
    ("optim:\n  base_lr: fast\n", "optim.base_lr must be a number, got 'fast' (str)"),
    ("optim:\n  nesterov: 1\n", "optim.nesterov must be true or false, got 1 (int)"),
    ("  batch_size: 2.5\n", "data.batch_size must be an integer, got 2.5 (float)"),
    ("optim: 0.1\n", "optim must be a mapping of keys, got 0.1 (float)"),
    ("tracking:\n  tags: pretrain\n", "tracking.tags must be a list, got 'pretrain' (str)"),
    ("run:\n  name: 12\n", "run.name must be a string, got 12 (int) (quote it in YAML)"),
])
def test_file_errors_name_the_file_the_dotted_key_and_a_fix(tmp_path, extra, expected):
    path = write(tmp_path, MINIMAL + extra)
    assert error_of(path, []) == f"{path}: {expected}"


def test_choices_are_checked_with_a_suggestion(tmp_path):
    assert error_of(None, ["data.train=s", "loss.name=softmx"]) == (
        "override 'loss.name=softmx': loss.name must be one of softmax, sigmoid, got 'softmx' "
        "(did you mean softmax?)")


@pytest.mark.parametrize("override, expected", [
    ("data.sampling.q=1.5", "data.sampling.q must be in [0, 1], got 1.5"),
    ("data.sampling.cap=0.5", "data.sampling.cap must be >= 1, got 0.5"),
    ("data.batch_size=0", "data.batch_size must be in [1, 4096], got 0"),
    ("optim.clip_grad=0", "optim.clip_grad must be > 0, got 0.0"),
    ("optim.base_lr=nan", "optim.base_lr must be finite, got nan"),
    ("optim.warmup_images=2000000", "optim.warmup_images must be smaller than optim.total_images (1000000), "
                                    "got 2000000"),
    ("run.name=a/b", "run.name must be a plain directory name (no '/'), got 'a/b'"),
])
def test_range_checks(override, expected):
    assert error_of(None, ["data.train=s", override]) == f"override {override!r}: {expected}"


@pytest.mark.parametrize("override, bound, why", [
    # Accepted before the bounds: the first two allocated or forked until the run hung, the third
    # skipped every sample as `corrupt` (30 GB per crop) and ended saying the shards were bad.
    ("data.batch_size=1e20", "in [1, 4096], got 100000000000000000000", "fits no accelerator"),
    ("data.workers=1000", "in [0, 64], got 1000", "outnumber the cores"),
    ("data.image_size=100000", "in [8, 1024], got 100000", "classification crops are 224-480 px"),
    ("data.shuffle_buffer=1e9", "in [1, 100000], got 1000000000", "gigabytes per worker"),
    ("eval.batch_size=5000", "in [1, 4096], got 5000", "fits no accelerator"),
])
def test_sizes_that_allocate_have_upper_bounds_and_say_why(override, bound, why):
    message = error_of(None, ["data.train=s", override])
    key = override.split("=")[0]
    assert message.startswith(f"override {override!r}: {key} must be {bound}: "), message
    assert why in message
    load_config(None, ["data.train=s", "data.batch_size=4096", "data.workers=64", "data.image_size=1024"])


@pytest.mark.parametrize("override, expected", [
    ("optim.schedule=linear", "optim.schedule must be one of step, cosine, got 'linear'"),
    ("optim.warmup_images=1000000", "optim.warmup_images must be smaller than optim.total_images (1000000), "
                                    "got 1000000"),
    ("dist.backend=mpi", "dist.backend must be one of auto, nccl, gloo, got 'mpi'"),
    ("tracking.wandb=offlne", "tracking.wandb must be one of online, offline, disabled, got 'offlne'"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last must be >= 1, got 0"),
])
def test_values_the_training_code_takes_as_given_are_checked_at_load(override, expected):
    # The schedule, the process group, the tracker and the checkpoint writer do not check these
    # again: the config is the one place, and its message names the key and the source.
    message = error_of(None, ["data.train=s", override])
    assert message.startswith(f"override {override!r}: {expected}"), message


def test_missing_required_train_shards(tmp_path):
    path = write(tmp_path, "optim:\n  base_lr: 0.2\n")
    assert error_of(path, []) == (f"{path}: data.train is required: set it in the config file or pass "
                                  "data.train=<shard directory>")


def test_overrides_are_yaml_values_type_checked_against_the_schema(tmp_path):
    path = write(tmp_path, MINIMAL + "optim:\n  base_lr: 0.2\n  weight_decay: 1e-4\n")
    config = load_config(path, ["optim.base_lr=0.4", "optim.total_images=1.5e9", "model.compile=true",
                                "optim.clip_grad=null", "tracking.tags=[a, b]", "data.sampling.q=0",
                                "data.sampling.cap=4", "run.seed=7"])
    assert config.optim.base_lr == 0.4
    assert config.optim.weight_decay == 1e-4  # PyYAML reads "1e-4" as a string: still a number here
    assert config.optim.total_images == 1_500_000_000 and isinstance(config.optim.total_images, int)
    assert config.model.compile is True and config.optim.clip_grad is None
    assert config.tracking.tags == ["a", "b"]
    assert config.data.sampling.q == 0.0 and isinstance(config.data.sampling.cap, float)
    assert config.run.seed == 7 and config.data.train == "shards/"


def test_a_section_override_merges_into_the_file(tmp_path):
    path = write(tmp_path, MINIMAL + "  sampling:\n    q: 0.5\n    cap: 8\n")
    config = load_config(path, ["data.sampling={q: 1.0}"])
    assert (config.data.sampling.q, config.data.sampling.cap) == (1.0, 8.0)
    assert error_of(path, ["data.sampling={q: 2}"]) == (
        "override 'data.sampling={q: 2}': data.sampling.q must be in [0, 1], got 2.0")
    path = write(tmp_path, MINIMAL + "  sampling:\n    cap: 0.5\n")
    assert error_of(path, ["data.sampling={q: 1}"]) == f"{path}: data.sampling.cap must be >= 1, got 0.5"


def test_bad_overrides(tmp_path):
    assert error_of(None, ["data.train"]) == ("override 'data.train': overrides look like section.key=value "
                                              "(e.g. optim.base_lr=0.2)")
    assert error_of(None, ["data..train=x"]).startswith("override 'data..train=x': 'data..train' is not a dotted")
    message = error_of(None, ["data.train=s", "optim.base_lr=[1"])
    assert message.startswith("override 'optim.base_lr=[1': not valid YAML")
    assert error_of(None, ["data.train=s", "optim.lr=0.3"]) == (
        "override 'optim.lr=0.3': unknown key optim.lr (did you mean optim.base_lr?)")
    # A value that the FILE set wrongly is still blamed on the file, even with overrides present.
    path = write(tmp_path, MINIMAL + "optim:\n  momentum: 2\n")
    assert error_of(path, ["optim.base_lr=0.3"]) == f"{path}: optim.momentum must be in [0, 1], got 2.0"
    path = write(tmp_path, MINIMAL + "optim: 3\n")
    assert error_of(path, ["optim.base_lr=0.3"]) == (
        "override 'optim.base_lr=0.3': cannot set optim.base_lr: optim holds 3 (int), not a section")


def test_duplicate_keys_and_non_mappings_are_errors(tmp_path):
    path = write(tmp_path, MINIMAL + "optim:\n  base_lr: 0.1\n  base_lr: 0.2\n")
    assert error_of(path, []) == f"{path}: not valid YAML (line 5, column 3): key 'base_lr' appears twice in one mapping"
    path = write(tmp_path, "- a\n- b\n")
    assert "a config file must be a mapping of sections" in error_of(path, [])
    assert error_of(tmp_path / "nope.yaml", []).startswith(f"config file {tmp_path / 'nope.yaml'} not found")


def test_empty_file_gives_defaults(tmp_path):
    path = write(tmp_path, "# nothing yet\n")
    assert load_config(path, ["data.train=s"]) == load_config(None, ["data.train=s"])


def test_resolved_config_round_trips_and_is_written_atomically(tmp_path):
    config = load_config(REPO / "configs" / "pretrain" / "cpu_demo.yaml", ["optim.base_lr=0.3", "tracking.tags=[x]"])
    run_dir = tmp_path / "runs" / "demo"
    path = save_resolved(config, run_dir)
    assert path == run_dir / CONFIG_FILE
    assert sorted(p.name for p in run_dir.iterdir()) == [CONFIG_FILE], "no temp file left behind"
    assert load_config(path, []) == config
    assert config_from_dict(yaml.safe_load(path.read_text())) == config
    assert config_to_dict(config)["optim"]["base_lr"] == 0.3
    assert path.read_text().startswith("# Resolved configuration")


def test_every_schema_key_is_documented_in_docs_config_md():
    docs = (REPO / "docs" / "config.md").read_text()
    assert config_reference(PretrainConfig) in docs, (
        "docs/config.md is out of date: paste the output of `python -m pretrain.config` into it")
    for key in all_keys(PretrainConfig):
        assert f"`{key}`" in docs


# A schema of another stage (as transfer defines its own) reuses the same machinery.
@dataclass
class _Head:
    classes: int = option(1000, "classes", min=1)
    kind: Literal["linear", "mlp"] = option("linear", "head")


@dataclass
class _TransferLike:
    head: _Head = section(_Head, "head")
    init: str | None = option(None, "checkpoint to start from", aliases=("checkpoint",))
    epochs: int = option(90, "epochs", min=1)


def test_the_machinery_takes_any_schema(tmp_path):
    path = write(tmp_path, "head:\n  classes: 10\nepochs: 5\n")
    config = load_config(path, ["init=runs/a/trunk.safetensors", "head.kind=mlp"], schema=_TransferLike)
    assert config == _TransferLike(_Head(10, "mlp"), "runs/a/trunk.safetensors", 5)
    assert error_of(path, ["checkpoint=x"], schema=_TransferLike) == (
        "override 'checkpoint=x': unknown key checkpoint (did you mean init?)")
    assert error_of(path, ["classes=3"], schema=_TransferLike) == (
        "override 'classes=3': unknown key classes (did you mean head.classes?)")
    assert all_keys(_TransferLike) == ["head.classes", "head.kind", "init", "epochs"]
    assert dataclasses.asdict(config)["head"] == {"classes": 10, "kind": "mlp"}


def test_data_train_takes_a_path_or_weighted_shard_sets(tmp_path):
    assert load_config(None, ["data.train=shards/"]).data.train == "shards/"
    config = load_config(None, ["data.train=[{path: a, weight: 3}, {path: b}]"])
    assert [(s.path, s.weight) for s in config.data.train] == [("a", 3.0), ("b", 1.0)]
    save_resolved(config, tmp_path)
    assert load_config(tmp_path / CONFIG_FILE) == config  # the list round-trips through config.yaml
    mixed = "override 'data.train=[{path: a, weight: %s}]': data.train[0].weight must be %s"
    assert error_of(None, ["data.train=[{path: a, weight: 0}]"]) == mixed % (0, "> 0, got 0.0")
    assert error_of(None, ["data.train=[{path: a, weight: -2}]"]) == mixed % (-2, "> 0, got -2.0")
    assert error_of(None, ["data.train=[{path: a, weight: .inf}]"]) == mixed % (".inf", "finite, got inf")
    assert error_of(None, ["data.train=[{path: a, weight: .nan}]"]) == mixed % (".nan", "finite, got nan")
    assert error_of(None, ["data.train=[{path: a, weight: yes}]"]).endswith("weight must be a number, got True (bool)")
    assert error_of(None, ["data.train=[{path: a, wieght: 2}]"]).endswith(
        "unknown key data.train[0].wieght (did you mean data.train[0].weight?)")
    assert error_of(None, ["data.train=[{weight: 2}]"]).endswith("data.train[0].path is required: the shard "
                                                                 "directory of this set")
    assert error_of(None, ["data.train=[{path: a}, {path: a/}]"]).endswith("data.train lists a twice; list each "
                                                                          "shard set once, with the weights added up")
    assert error_of(None, ["data.train=[]"]).endswith("data.train is an empty list: give a shard directory, or a "
                                                      "list of {path: <shard directory>, weight: <number>} entries")
    assert error_of(None, ["data.train={path: a}"]).endswith(
        "data.train must be str or list of {path, weight} or null, got {'path': 'a'} (dict)")

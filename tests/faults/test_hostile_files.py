"""Hostile files a user may be handed: a checkpoint carrying pickled code, and YAML with python tags.
Both are refused with one clear line, by every command that reads them, and the code never runs:
each payload would create a marker directory (and does, when loaded unsafely)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from data.errors import UserError
from pretrain.__main__ import main as pretrain_main
from pretrain.checkpoint import LATEST, load_checkpoint, load_resume
from tests.faults.run_checks import one_error_line
from tests.pretrain_runs import make_shards, write_config
from tests.transfer_factory import image_folder
from transfer.__main__ import main as transfer_main

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this runs os.mkdir(marker): the shape of a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _evil_checkpoint(path: Path, marker: Path, container: str = "torch-zip") -> Path:
    state = {"format": "openwsl-checkpoint", "images_seen": 32, "step": 8, "model": {"w": torch.zeros(2)},
             "extra": _Payload(marker)}
    torch.save(state, path, _use_new_zipfile_serialization=container == "torch-zip")
    return path



@pytest.mark.parametrize("container", ["torch-zip", "legacy-pickle"])
def test_checkpoint_carrying_pickled_code_is_refused(tmp_path, container):
    marker = tmp_path / "pwned"
    path = _evil_checkpoint(tmp_path / "evil.pt", marker, container)
    with pytest.raises(UserError, match=r"refused to load: the file carries pickled Python code "
                                        r"\((posix|os)\.mkdir\)") as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    assert not marker.exists()
    with pytest.raises(UserError):
        load_resume(tmp_path, str(path))
    assert not marker.exists()
    # The payload is real: an unsafe load runs it.
    torch.load(path, weights_only=False)
    assert marker.is_dir()


@pytest.fixture
def pretrain_config(tmp_path) -> Path:
    train, _ = make_shards(tmp_path)
    return write_config(tmp_path / "run.yaml", train, None, tmp_path / "runs", "hostile", data={"workers": 0})


def test_pretraining_refuses_to_resume_from_a_checkpoint_carrying_code(tmp_path, pretrain_config, capsys):
    marker = tmp_path / "pwned"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    line = one_error_line(pretrain_main, ["--config", str(pretrain_config), f"checkpoint.resume={evil}"], capsys)
    assert line.startswith(f"error: {evil}: refused to load: the file carries pickled Python code")
    # Planted as the run's own latest checkpoint, it is refused too (and the run is not restarted
    # over it silently).
    run_dir = tmp_path / "runs" / "hostile"
    run_dir.mkdir(parents=True)
    _evil_checkpoint(run_dir / LATEST, marker)
    line = one_error_line(pretrain_main, ["--config", str(pretrain_config)], capsys)
    assert line.startswith(f"error: {run_dir} holds checkpoints but none loads ({LATEST}: refused to load: the file "
                           "carries pickled Python code")
    assert not marker.exists()


def test_transfer_refuses_weights_carrying_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = _evil_checkpoint(tmp_path / "evil.pth", marker)
    val = image_folder(tmp_path / "val", {"red": 2, "blue": 2})
    line = one_error_line(transfer_main, ["evaluate", "--config", str(REPO / "configs/transfer/cpu_demo_eval.yaml"),
                                           f"init={evil}", f"data.val={val}", f"run.dir={tmp_path / 'runs'}",
                                           "data.workers=0"], capsys)
    assert line.startswith(f"error: {evil}: refused to load") and not marker.exists()


PYTHON_TAG = "!!python/object/apply:os.mkdir [{marker}]"


def test_yaml_python_tags_are_refused_by_both_config_loaders_and_never_run(tmp_path, pretrain_config, capsys):
    marker = tmp_path / "pwned"
    payload = PYTHON_TAG.format(marker=marker)
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"data:\n  train: {tmp_path / 'train'}\nrun:\n  name: {payload}\n")
    line = one_error_line(pretrain_main, ["--config", str(evil)], capsys)
    assert line.startswith(f"error: {evil}: not valid YAML (line ") and "python tags are refused" in line
    line = one_error_line(pretrain_main, ["--config", str(pretrain_config), f"run.name={payload}"], capsys)
    assert line.startswith("error: override 'run.name=!!python") and "python tags are refused" in line
    transfer = tmp_path / "transfer.yaml"
    transfer.write_text((REPO / "configs/transfer/cpu_demo_eval.yaml").read_text() + f"seed: {payload}\n")
    line = one_error_line(transfer_main, ["evaluate", "--config", str(transfer)], capsys)
    assert line.startswith(f"error: {transfer}: not valid YAML (line ") and "python tags are refused" in line
    assert not marker.exists()
    # The payload is real: an unsafe loader would have run it.
    yaml.unsafe_load(evil.read_text())
    assert marker.exists()


def _laughs(levels: int) -> str:
    """A 'billion laughs' list: each level nine aliases of the one before, 9**levels strings in all."""
    items = ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    items += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


@pytest.mark.parametrize("value, problem", [
    # 9**7 = 4.8 M values from 8 lines (before the bound: a 40 MB error line; 9**9 ran out of memory).
    (_laughs(7), "the document expands to more than 100,000 values through anchors and aliases"),
    ("&a [x, *a]", "an alias refers to a node that contains it"),
    ("[" * 20_000 + "]" * 20_000, "nested deeper than the parser can follow"),
])
def test_yaml_that_expands_or_nests_without_bound_is_refused_by_both_config_loaders(tmp_path, capsys, value, problem):
    config = tmp_path / "laughs.yaml"
    config.write_text(f"data:\n  train: {value}\n")
    line = one_error_line(pretrain_main, ["--config", str(config)], capsys)
    assert line.startswith(f"error: {config}: not valid YAML") and problem in line and len(line) < 400, line[:400]
    line = one_error_line(transfer_main, ["finetune", "--config", str(config)], capsys)
    assert line.startswith(f"error: {config}: not valid YAML") and problem in line and len(line) < 400, line[:400]
    # The same in an override.
    plain = tmp_path / "plain.yaml"
    plain.write_text("data:\n  train: shards\n")
    line = one_error_line(pretrain_main, ["--config", str(plain), f"data.train={value}"], capsys)
    assert line.startswith("error: override 'data.train=") and problem in line

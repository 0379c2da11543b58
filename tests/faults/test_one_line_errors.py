"""Errors that must reach the user as the one line of ``data.errors.cli_main`` (``error: …``, exit 2,
no traceback), wherever in the process they are raised: inside a DataLoader worker, while claiming
the run directory, while reading a checkpoint."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from pretrain.__main__ import main as pretrain_main
from tests.faults import child_process
from tests.faults.dirty_shards import plan, write_dirty_shards
from tests.faults.run_checks import one_error_line
from tests.pretrain_runs import REPO, job_env, make_shards, write_config
from tests.transfer_factory import colour_task
from transfer.__main__ import main as transfer_main


def _pretrain(config: Path, *overrides: str) -> child_process.Finished:
    return child_process.run([sys.executable, "-m", "pretrain", "--config", str(config), *overrides],
                             env=job_env(), timeout=300)


def test_a_user_error_raised_in_a_dataloader_worker_is_its_one_line(tmp_path):
    # Every image corrupt: the loader's stall guard raises a UserError inside the worker process,
    # which torch re-raises in the main process from the worker's formatted traceback.
    shards = write_dirty_shards(tmp_path / "shards", "train", [plan(40, {i: "corrupt" for i in range(40)})] * 2)
    config = write_config(tmp_path / "run.yaml", shards, None, tmp_path / "runs", "corrupt", data={"workers": 1})
    line = _pretrain(config).assert_one_error_line()
    assert line.startswith("error: read ") and "without one usable sample; check the shards" in line, line
    assert "DataLoader worker" not in line



@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"))[0]


@pytest.mark.parametrize("case", ["run dir is a file", "run.dir is a file", "run.dir is read-only"])
def test_a_run_directory_that_cannot_be_made_is_one_line(tmp_path, shards, capsys, case):
    runs = tmp_path / "runs"
    if case == "run dir is a file":
        runs.mkdir()
        (runs / "one").write_text("a note the user keeps here\n")
        expected = f"error: cannot create the run directory {runs / 'one'}: a file of that name is in the way"
    elif case == "run.dir is a file":
        runs.write_text("a note the user keeps here\n")
        expected = f"error: cannot create the run directory {runs / 'one'}: Not a directory"
    else:
        if not Path("/sys").is_dir():
            pytest.skip("needs Linux's read-only /sys (a read-only place even for root)")
        runs = Path("/sys/openwsl-runs")
        expected = f"error: cannot create the run directory {runs / 'one'}: "
    config = write_config(tmp_path / "run.yaml", shards, None, runs, "one", data={"workers": 0})
    line = one_error_line(pretrain_main, ["--config", str(config)], capsys)
    assert line.startswith(expected) and "set run.dir" in line, line
    train_dir, val_dir, weights = colour_task(tmp_path / "transfer", 4, 2)
    line = one_error_line(transfer_main, ["linear", "--config", str(REPO / "configs/transfer/cpu_demo_linear.yaml"),
                                             f"init={weights}", f"data.train={train_dir}", f"data.val={val_dir}",
                                             f"run.dir={runs}", "run.name=one"], capsys)
    assert line.startswith(expected) and "set run.dir" in line, line
    if case != "run.dir is read-only":
        assert "a note the user keeps here" in (runs if runs.is_file() else runs / "one").read_text()


@pytest.mark.parametrize("model", ["weights", ["w"], {"w": "not a tensor"}, None])
def test_a_checkpoint_whose_model_is_not_a_state_dict_is_one_line(tmp_path, shards, capsys, model):
    odd = tmp_path / "odd.pt"
    state = {"format": "openwsl-checkpoint", "version": 1, "images_seen": 32, "step": 8, "model": model}
    if model is None:
        del state["model"]
    torch.save(state, odd)
    config = write_config(tmp_path / "run.yaml", shards, None, tmp_path / "runs", "one", data={"workers": 0})
    line = one_error_line(pretrain_main, ["--config", str(config), f"checkpoint.resume={odd}"], capsys)
    assert line.startswith(f"error: {odd}: its 'model' entry is ") and "not a state dict of named tensors" in line
    train_dir, val_dir, _ = colour_task(tmp_path / "transfer", 4, 2)
    line = one_error_line(transfer_main, ["evaluate", "--config", str(REPO / "configs/transfer/cpu_demo_eval.yaml"),
                                             f"init={odd}", f"data.val={val_dir}", f"run.dir={tmp_path / 'runs'}",
                                             "run.name=eval", "data.workers=0"], capsys)
    assert line.startswith(f"error: {odd}: its 'model' entry is ") and "not a state dict of named tensors" in line


@pytest.mark.parametrize("counts", ["3,1,2", ["3", 1], [1.5, 2], {"0": 3}, -1])
def test_wrong_typed_label_counts_in_info_json_is_one_line(tmp_path, shards, capsys, counts):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    info = json.loads((copy / "info.json").read_text())
    info["label_counts"] = counts
    (copy / "info.json").write_text(json.dumps(info))
    config = write_config(tmp_path / "run.yaml", copy, None, tmp_path / "runs", "one", data={"workers": 0})
    line = one_error_line(pretrain_main, ["--config", str(config)], capsys)
    assert line.startswith(f"error: {copy / 'info.json'}: 'label_counts' must be a list of per-label image counts"), line
    assert "build_shards.py --finalize" in line, line

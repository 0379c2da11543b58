"""transfer/init.py: every supported weights file loads into the same code, heads are kept or
replaced as asked, and a wrong architecture is one clear error."""
from __future__ import annotations

import subprocess
import sys

import pytest
import safetensors.torch
import torch
import torchvision

from data.errors import UserError
from pretrain.checkpoint import export_trunk, save_checkpoint
from pretrain.model import create_model
from tests.transfer_factory import image_folder, tiny_model_file
from transfer.init import build_model, read_weights

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_torchvision_resnext101_32x8d_file_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnext101_32x8d(weights=None).eval()
    # Wrapped and prefixed the way DDP training scripts save: {"state_dict": {"module.conv1.weight": ...}}.
    path = tmp_path / "resnext101_32x8d.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}, "epoch": 3}, path)
    model, report = build_model("resnext101_32x8d", 1000, str(path), head="keep")
    assert report.head == "loaded" and report.missing == [] and report.unexpected == []
    assert report.loaded == len(reference.state_dict())
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(model.eval()(images), reference(images))


def test_head_is_replaced_for_other_class_counts_and_trunk_kept(tmp_path):
    path = tiny_model_file(tmp_path / "tiny.pth", num_classes=10)
    source = torch.load(path, weights_only=True)
    model, report = build_model("resnext_micro", 3, str(path), head="keep")
    assert report.head == "new" and model.fc.out_features == 3
    assert torch.equal(model.state_dict()["layer4.0.conv2.weight"], source["layer4.0.conv2.weight"])
    assert report.head_not_loaded == ["fc.weight", "fc.bias"] and report.unexpected == []
    assert "file head fc.weight, fc.bias not loaded" in report.summary()


def test_pretraining_checkpoint_trunk_export_and_safetensors_load(tmp_path):
    torch.manual_seed(0)
    hashtag_model = create_model("resnext_micro", 50)
    state = hashtag_model.state_dict()
    save_checkpoint(tmp_path / "run", {"model": {f"module.{k}": v for k, v in state.items()}, "step": 1}, 64, 1)
    trunk = export_trunk(state, tmp_path / "trunk.safetensors", architecture="resnext_micro")
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(plain))
    kinds = {}
    for init in (tmp_path / "run", trunk, plain):
        model, report = build_model("resnext_micro", 4, str(init), head="replace")
        kinds[init.name] = report.kind
        assert report.head == "new" and report.missing == []
        assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
        assert report.weights_sha256 and len(report.weights_sha256) == 64
    assert kinds == {"run": "openwsl checkpoint", "trunk.safetensors": "openwsl trunk export",
                     "plain.safetensors": "safetensors"}


def test_zero_shot_keeps_the_hashtag_head_of_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    state = create_model("resnext_micro", 50).state_dict()
    save_checkpoint(tmp_path / "run", {"model": state, "step": 1}, 64, 1)
    model, report = build_model("resnext_micro", 50, str(tmp_path / "run"), head="keep")
    assert report.head == "loaded" and torch.equal(model.fc.weight, state["fc.weight"])


def test_wrong_architecture_names_first_mismatching_key_and_both_shapes(tmp_path):
    path = tiny_model_file(tmp_path / "small.pth", num_classes=5, name="resnext_small")
    with pytest.raises(UserError) as err:
        build_model("resnext_tiny", 5, str(path))
    message = str(err.value)
    assert "layer1.0.conv1.weight" in message and "(64, 64, 1, 1)" in message and "(32, 64, 1, 1)" in message
    assert "\n" not in message


def test_unrelated_file_pickled_code_and_missing_file_are_clear_errors(tmp_path):
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="no tensor name matches the model"):
        build_model("resnext_micro", 2, str(tmp_path / "other.pth"))
    torch.save({"w": torch.zeros(1), "fn": print}, tmp_path / "code.pth")
    with pytest.raises(UserError, match="refused to load"):
        read_weights(tmp_path / "code.pth")
    with pytest.raises(UserError, match="no such file"):
        read_weights(tmp_path / "absent.pth")


def test_cli_wrong_architecture_exits_2_with_one_error_line(tmp_path):
    path = tiny_model_file(tmp_path / "small.pth", num_classes=2, name="resnext_small")
    val = image_folder(tmp_path / "val", {"red": 2, "blue": 2})
    done = subprocess.run([sys.executable, "-m", "transfer", "evaluate", "--config", str(REPO_ROOT / "configs/transfer/cpu_demo_eval.yaml"),
                           f"init={path}", f"data.val={val}", f"run.dir={tmp_path / 'runs'}", "data.workers=0",
                           "model.name=resnext_tiny"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "layer1.0.conv1.weight" in lines[0]


def test_random_init_depends_on_the_run_seed_only_not_on_the_rank_seed():
    # Under torchrun each rank seeds torch with seed + rank; the model must still be the same on all.
    models = []
    for rank_seed in (0, 1):
        torch.manual_seed(rank_seed)
        models.append(build_model("resnext_micro", 3, None, seed=7)[0].state_dict())
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    other = build_model("resnext_micro", 3, None, seed=8)[0].state_dict()
    assert not torch.equal(models[0]["conv1.weight"], other["conv1.weight"])
    after = torch.rand(1)
    torch.manual_seed(1)
    build_model("resnext_micro", 3, None, seed=7)
    assert torch.equal(torch.rand(1), after), "the caller's generator is left as it was"

"""The model factory: exact architecture sizes, torchvision/WSL checkpoint compatibility, the
paper's initialisation, optimiser groups, timm models and the head helpers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.resnet import Bottleneck

from data.errors import UserError
from pretrain.checkpoint import export_trunk, load_trunk, unwrap_model
from pretrain.loss import MultiLabelSoftmaxLoss
from pretrain.model import BUILTIN_ARCHITECTURES, create_model, head_name, param_groups, pooled_features, reset_head

# torchvision's ResNet(Bottleneck, blocks, groups, width_per_group) at 1,000 classes, and its
# multiply-adds for one 224x224 image. The paper's table rounds the big five to 43 / 88 / 193 /
# 466 / 829 M parameters and 8 / 16 / 36 / 87 / 153 GFLOPs.
SIZES = {
    "resnext_micro": (848_024, 0.09),
    "resnext_tiny": (5_985_064, 0.76),
    "resnext_small": (10_119_976, 1.48),
    "resnext101_32x4d": (44_177_704, 8),
    "resnext101_32x8d": (88_791_336, 16),
    "resnext101_32x16d": (194_026_792, 36),
    "resnext101_32x32d": (468_530_472, 87),
    "resnext101_32x48d": (828_411_176, 153),
}


def _count(model: nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


def _trunk_keys(model: nn.Module, folder: Path) -> set[str]:
    """The keys of the trunk export, written as pretraining writes it: the model's state without
    the head that :func:`head_name` names."""
    path = export_trunk(unwrap_model(model).state_dict(), folder / "trunk.safetensors", architecture="test",
                        head_prefix=head_name(model) + ".")
    return set(load_trunk(path)[0])


@pytest.mark.parametrize("name", list(SIZES))
def test_exact_parameter_count_and_paper_flops(name):
    params, gmacs = SIZES[name]
    with torch.device("meta"):
        model = create_model(name, 1000)
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 224, 224))
    assert _count(model) == params
    # FlopCounterMode counts a multiply-add as 2 FLOPs.
    assert counter.get_total_flops() / 2e9 == pytest.approx(gmacs, abs=0.5 if gmacs >= 8 else 0.01)


def test_every_builtin_has_a_stated_size():
    assert set(BUILTIN_ARCHITECTURES) == set(SIZES)


@pytest.fixture(scope="module")
def torchvision_32x8d(tmp_path_factory) -> tuple[Path, Path, torch.Tensor, torch.Tensor]:
    """A torchvision ResNeXt-101 32x8d with random weights and random BN statistics (so every
    tensor matters), saved as .pth and .safetensors, plus a batch and its logits."""
    torch.manual_seed(0)
    reference = torchvision.models.resnext101_32x8d(weights=None).eval()
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    folder = tmp_path_factory.mktemp("wsl")
    pth, safetensors = folder / "wsl.pth", folder / "wsl.safetensors"
    torch.save(reference.state_dict(), pth)
    save_file(reference.state_dict(), str(safetensors))
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits = reference(images)
    return pth, safetensors, images, logits


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_torchvision_state_dict_loads_strictly_with_identical_logits(torchvision_32x8d, fmt):
    pth, safetensors, images, expected = torchvision_32x8d
    state = torch.load(pth, weights_only=True) if fmt == "pth" else load_file(str(safetensors))
    model = create_model("resnext101_32x8d", 1000)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        logits = model.eval()(images)
    assert torch.equal(logits, expected)
    assert head_name(model) == "fc"  # the trunk export leaves out exactly torchvision's classifier


def test_last_bn_gamma_of_each_block_is_zero_other_bns_are_one():
    model = create_model("resnext_small", 10)
    blocks = [module for module in model.modules() if isinstance(module, Bottleneck)]
    assert len(blocks) == 8
    last = {id(block.bn3.weight) for block in blocks}
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            expected = 0.0 if id(module.weight) in last else 1.0
            assert torch.all(module.weight == expected) and torch.all(module.bias == 0)
    untouched = create_model("resnext_small", 10, zero_init_residual=False)
    assert all(torch.all(block.bn3.weight == 1) for block in untouched.modules()
               if isinstance(block, Bottleneck))


def test_head_is_drawn_from_normal_0_001():
    torch.manual_seed(1)
    weight = create_model("resnext_tiny", 1000).fc.weight.detach()
    # 2,048,000 draws: the sample std's own std is 0.01 / sqrt(2n) = 5e-6 and the mean's is
    # 0.01 / sqrt(n) = 7e-6, so 1e-4 on each is > 10 sigma, while PyTorch's default Linear init
    # (uniform, std 1/sqrt(3 * 2048) = 0.0128) fails the std check by 2.8e-3.
    assert weight.std().item() == pytest.approx(0.01, abs=1e-4)
    assert abs(weight.mean().item()) < 1e-4
    kurtosis = ((weight - weight.mean()) ** 4).mean() / weight.var() ** 2
    assert kurtosis.item() == pytest.approx(3.0, abs=0.05)  # normal (3), not uniform (1.8)
    assert torch.all(create_model("resnext_tiny", 1000).fc.bias == 0)


@pytest.mark.parametrize("name", ["resnext_micro", "resnet18", "deit_tiny_distilled_patch16_224"])
def test_head_bias_goes_to_every_classifier_and_bad_ones_are_refused(name):
    """``head_bias`` (the sigmoid's label prior) is the classifier's bias, on both heads of a
    distilled timm model; the weights are drawn as always."""
    bias = torch.linspace(-6.0, -1.0, 7, dtype=torch.float64)
    model = create_model(name, 7, head_bias=bias.numpy())
    heads = model.get_classifier()
    for head in heads if isinstance(heads, tuple) else (heads,):
        torch.testing.assert_close(head.bias.detach(), bias.float())
        assert head.weight.std().item() == pytest.approx(0.01, rel=0.5)
    with pytest.raises(ValueError, match="head_bias must hold 7 finite values"):
        create_model(name, 7, head_bias=[0.0] * 6)
    with pytest.raises(ValueError, match="head_bias must hold 7 finite values"):
        create_model(name, 7, head_bias=[float("-inf")] + [0.0] * 6)


def _group_ids(model: nn.Module, weight_decay: float) -> tuple[set[int], set[int]]:
    decay, no_decay = param_groups(model, weight_decay)
    assert decay["weight_decay"] == weight_decay and no_decay["weight_decay"] == 0.0
    return {id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}


@pytest.mark.parametrize("name", ["resnext_tiny", "resnet18", "vit_tiny_patch16_224"])
def test_param_groups_split_weights_from_bn_and_biases(name):
    model = create_model(name, 10)
    decay, no_decay = _group_ids(model, 1e-4)
    params = dict(model.named_parameters())
    assert not decay & no_decay and decay | no_decay == {id(p) for p in params.values()}
    exempt = set(getattr(model, "no_weight_decay", set)())
    for name_, param in params.items():
        in_decay = id(param) in decay
        assert in_decay == (param.ndim > 1 and name_ not in exempt), name_
    conv_and_linear = {id(m.weight) for m in model.modules()
                       if isinstance(m, (nn.Conv2d, nn.Linear))}
    norms = {id(p) for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))
             for p in m.parameters()}
    assert decay == conv_and_linear - {id(params[n]) for n in exempt if n in params}
    assert norms <= no_decay
    torch.optim.SGD(param_groups(model, 1e-4), lr=0.1, momentum=0.9, nesterov=True)


def test_param_groups_leave_frozen_parameters_out():
    model = create_model("resnext_tiny", 10)
    for param in model.parameters():
        param.requires_grad_(False)
    head = reset_head(model, 4)
    decay, no_decay = _group_ids(model, 1e-4)
    assert decay == {id(head.weight)} and no_decay == {id(head.bias)}


def test_timm_model_by_name(tmp_path):
    torch.manual_seed(2)
    model = create_model("resnet18", 7)
    assert head_name(model) == "fc" and model.fc.out_features == 7
    # 3,584 draws: the sample std's relative std is 1 / sqrt(2n) = 1.2%, so 10% is > 8 sigma.
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.all(model.layer1[0].bn2.weight == 0)  # BasicBlock's last BN
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert _trunk_keys(model, tmp_path) == {key for key in model.state_dict() if not key.startswith("fc.")}

    convnext = create_model("convnext_atto", 5)
    assert head_name(convnext) == "head.fc"
    trunk = _trunk_keys(convnext, tmp_path)
    assert "head.norm.weight" in trunk and not any(k.startswith("head.fc.") for k in trunk)


def test_tiny_variants_train_on_cpu():
    torch.manual_seed(3)
    images = torch.randn(4, 3, 32, 32)
    targets = torch.zeros(4, 6)
    targets[[0, 1, 2, 3, 3], [0, 1, 2, 3, 5]] = 1
    loss_fn = MultiLabelSoftmaxLoss()
    for name in ("resnext_tiny", "resnext_small"):
        model = create_model(name, 6)
        optimizer = torch.optim.SGD(param_groups(model, 1e-4), lr=0.01, momentum=0.9)
        losses = []
        for _ in range(3):
            optimizer.zero_grad()
            loss = loss_fn(model(images), targets)
            loss.backward()
            assert all(torch.isfinite(p.grad).all() for p in model.parameters())
            optimizer.step()
            losses.append(loss.item())
        # The batch is memorised: with this seed the third step's loss is ~0.29, down from ~1.8
        # (its floor is ln(2) / 4 = 0.17: row 3's two labels can each get at most 1/2).
        assert losses[-1] < losses[0] / 2, losses


def test_features_and_head_reset():
    model = create_model("resnext_tiny", 10).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = pooled_features(model, images)
        assert features.shape == (2, model.num_features) == (2, 2048)
        torch.testing.assert_close(model(images), model.fc(features))
        head = reset_head(model, 3)
        assert model.fc is head and head.weight.shape == (3, 2048) and torch.all(head.bias == 0)
        reset_head(model, 0)
        torch.testing.assert_close(model(images), features)
    headless = create_model("resnext_tiny", 0)
    assert isinstance(headless.fc, nn.Identity) and headless(images).shape == (2, 2048)


def test_helpers_see_through_compile_and_ddp(tmp_path):
    model = create_model("resnext_tiny", 10)
    keys = _trunk_keys(model, tmp_path)
    compiled = torch.compile(model)  # compiled lazily: no compile here
    assert unwrap_model(compiled) is model and _trunk_keys(compiled, tmp_path) == keys
    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(model)
        assert unwrap_model(wrapped) is model and head_name(wrapped) == "fc"
        assert _trunk_keys(wrapped, tmp_path) == keys
        grouped = sum(len(group["params"]) for group in param_groups(wrapped, 1e-4))
        assert grouped == len(list(model.parameters()))
    finally:
        dist.destroy_process_group()


def test_unknown_name_and_bad_options_are_user_errors():
    with pytest.raises(UserError, match=r"unknown model 'resnext101_32x6d'; closest: .*"
                                        r"resnext101_32x8d.*built-in names are resnext_micro, resnext_tiny, "
                                        r"resnext_small, resnext101_32x4d.*any timm model name"):
        create_model("resnext101_32x6d", 10)
    with pytest.raises(UserError, match="no option 'widht'; its options are zero_init_residual"):
        create_model("resnext_tiny", 10, widht=3)
    with pytest.raises(UserError, match=r"'resnet18' \(timm\) does not accept.*'drop_rat'"):
        create_model("resnet18", 10, drop_rat=0.1)
    with pytest.raises(UserError, match="'pretrained' is not an option"):
        create_model("resnet18", 10, pretrained=True)
    with pytest.raises(UserError, match="num_classes must be a non-negative integer, got -1"):
        create_model("resnext_tiny", -1)

"""The pretraining model: ResNeXt-101 32xCd exactly as torchvision builds it, any timm model, and
small ResNeXt variants for CPU tests and the demo.

Built-in names (parameters at 1,000 classes; multiply-adds for one 224x224 image):

=====================  ==============  ============  ===========  ===============
name                   blocks          groups x d    parameters   GMACs @ 224
=====================  ==============  ============  ===========  ===============
``resnext_micro``      [1, 1, 1, 1]    8 x 8         848,024      0.09
``resnext_tiny``       [1, 1, 1, 1]    8 x 4         5,985,064    0.76
``resnext_small``      [2, 2, 2, 2]    16 x 4        10,119,976   1.48
``resnext101_32x4d``   [3, 4, 23, 3]   32 x 4        44,177,704   7.97
``resnext101_32x8d``   [3, 4, 23, 3]   32 x 8        88,791,336   16.41
``resnext101_32x16d``  [3, 4, 23, 3]   32 x 16       194,026,792  36.16
``resnext101_32x32d``  [3, 4, 23, 3]   32 x 32       468,530,472  87.11
``resnext101_32x48d``  [3, 4, 23, 3]   32 x 48       828,411,176  153.31
=====================  ==============  ============  ===========  ===============

All of them are torchvision's ``ResNet(Bottleneck, blocks, groups=g, width_per_group=d)``, so their
state-dict keys (``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``) are torchvision's and the
official WSL checkpoints load strictly. The paper's table rounds the big five to 43 / 88 / 193 /
466 / 829 M parameters and 8 / 16 / 36 / 87 / 153 GFLOPs. The small variants keep the same
Bottleneck-with-groups code path, only with fewer blocks and narrower groups, so a CPU test
exercises what a cluster run does. ``resnext_tiny`` and ``resnext_small`` keep the 2,048 pooled
features; ``resnext_micro`` (the CPU demo's network) also has a quarter of the stage widths (16 to
128 planes, 512 pooled features), which makes it about 6x faster than ``resnext_tiny`` at 64 px.

Any other name goes to ``timm.create_model(name, pretrained=False, ...)``. Every model returned has
timm's head interface (``num_features``, ``forward_features``, ``forward_head``,
``get_classifier``, ``reset_classifier``), which the helpers below and the transfer stage rely on.
The helpers accept the model as the engine holds it, inside DDP and/or ``torch.compile``.
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import timm
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from data.errors import UserError
from pretrain.checkpoint import unwrap_model

# The paper (after Goyal et al.) draws the hashtag classifier from N(0, 0.01^2) with zero bias.
HEAD_INIT_STD = 0.01


@dataclass(frozen=True)
class Architecture:
    """A ResNeXt: torchvision's Bottleneck stacked in four stages."""

    blocks: tuple[int, int, int, int]
    groups: int
    width_per_group: int
    # Planes per stage (each stage outputs 4x as many channels); the stem outputs planes[0].
    planes: tuple[int, int, int, int] = (64, 128, 256, 512)


BUILTIN_ARCHITECTURES: dict[str, Architecture] = {
    "resnext_micro": Architecture((1, 1, 1, 1), 8, 8, planes=(16, 32, 64, 128)),
    "resnext_tiny": Architecture((1, 1, 1, 1), 8, 4),
    "resnext_small": Architecture((2, 2, 2, 2), 16, 4),
    **{f"resnext101_32x{c}d": Architecture((3, 4, 23, 3), 32, c) for c in (4, 8, 16, 32, 48)},
}


class ResNeXt(ResNet):
    """torchvision's ``ResNet(Bottleneck, ...)`` with timm's feature/head interface added.

    The constructor is torchvision's with the stage widths as a parameter (torchvision fixes them
    at 64..512); modules, names and initialisation are torchvision's, so at the standard widths the
    state dict is exactly torchvision's.
    """

    def __init__(self, arch: Architecture, num_classes: int, zero_init_residual: bool = True,
                 norm_layer: Callable[..., nn.Module] | None = None,
                 replace_stride_with_dilation: list[bool] | None = None) -> None:
        nn.Module.__init__(self)
        dilate = replace_stride_with_dilation or [False, False, False]
        if len(dilate) != 3:
            raise UserError("model option replace_stride_with_dilation takes 3 booleans, got "
                            f"{replace_stride_with_dilation!r}")
        # The attributes torchvision's _make_layer reads.
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.inplanes, self.dilation = arch.planes[0], 1
        self.groups, self.base_width = arch.groups, arch.width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(Bottleneck, arch.planes[0], arch.blocks[0])
        self.layer2 = self._make_layer(Bottleneck, arch.planes[1], arch.blocks[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(Bottleneck, arch.planes[2], arch.blocks[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(Bottleneck, arch.planes[3], arch.blocks[3], stride=2, dilate=dilate[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = arch.planes[3] * Bottleneck.expansion
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """torchvision's initialisation (the head is re-drawn by create_model)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            # Goyal et al.: each residual block starts as the identity.
            for module in self.modules():
                if isinstance(module, Bottleneck) and module.bn3.weight is not None:
                    nn.init.zeros_(module.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map, ``N x num_features x H/32 x W/32``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global-average-pool a feature map; ``pre_logits`` stops before the classifier."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def create_model(name: str, num_classes: int, *, head_bias: Sequence[float] | np.ndarray | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build an untrained model with a ``num_classes``-way head (0: no head, pooled features out).

    Built-in ResNeXts take ``zero_init_residual`` (default True) and torchvision ``ResNet``'s
    ``norm_layer`` / ``replace_stride_with_dilation``; timm models take timm's keyword arguments
    (and ``zero_init_residual``, applied through the blocks' ``zero_init_last``). The classifier is
    always re-drawn from N(0, 0.01^2), its bias zero (the paper's) or ``head_bias``, one value per
    class (the sigmoid loss's label prior, pretrain/label_prior.py).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise UserError(f"model num_classes must be a non-negative integer, got {num_classes!r}")
    bias = None if head_bias is None else torch.as_tensor(np.asarray(head_bias, dtype=np.float64))
    if bias is not None and (bias.shape != (num_classes,) or not torch.isfinite(bias).all()):
        raise ValueError(f"head_bias must hold {num_classes} finite values (one per class), got shape "
                         f"{tuple(bias.shape)}")
    if "pretrained" in kwargs:
        raise UserError(f"model '{name}': 'pretrained' is not an option here; models are built "
                        "untrained and weights come from a checkpoint (init=<path>)")
    zero_init_residual = kwargs.pop("zero_init_residual", True)
    if name in BUILTIN_ARCHITECTURES:
        model = _create_builtin(name, num_classes, zero_init_residual, kwargs)
    elif timm.is_model(name):
        model = _create_timm(name, num_classes, zero_init_residual, kwargs)
    else:
        raise UserError(_unknown_name_message(name))
    for classifier in _classifiers(model):
        _init_head(classifier, bias)
    return model


def _create_builtin(name: str, num_classes: int, zero_init_residual: bool,
                    kwargs: dict[str, Any]) -> ResNeXt:
    accepted = set(inspect.signature(ResNeXt.__init__).parameters) - {
        "self", "arch", "num_classes", "zero_init_residual"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise UserError(f"model '{name}' has no option '{unknown[0]}'; its options are "
                        f"zero_init_residual, {', '.join(sorted(accepted))}")
    return ResNeXt(BUILTIN_ARCHITECTURES[name], num_classes, zero_init_residual, **kwargs)


def _create_timm(name: str, num_classes: int, zero_init_residual: bool,
                 kwargs: dict[str, Any]) -> nn.Module:
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as err:
        # timm forwards keyword arguments down to the model class; a misspelt one ends there.
        if "unexpected keyword argument" not in str(err):
            raise
        raise UserError(f"model '{name}' (timm) does not accept the given options: {err}") from None
    if zero_init_residual:
        for module in model.modules():
            if module is not model and callable(getattr(module, "zero_init_last", None)):
                module.zero_init_last()
    return model


def _unknown_name_message(name: str) -> str:
    builtins = list(BUILTIN_ARCHITECTURES)
    candidates = list(dict.fromkeys(builtins + timm.list_models()))
    closest = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"; closest: {', '.join(closest)}" if closest else ""
    return (f"unknown model '{name}'{hint}; built-in names are {', '.join(builtins)}, "
            "and any timm model name works (python -c 'import timm; print(timm.list_models())')")


def _init_head(head: nn.Module, bias: torch.Tensor | None = None) -> None:
    """Weights from N(0, 0.01^2), biases zero; ``bias`` (one value per class) goes to the last
    layer, the one that outputs the classes."""
    layers = [layer for layer in head.modules() if isinstance(layer, (nn.Linear, nn.Conv2d))]
    for layer in layers:
        nn.init.normal_(layer.weight, mean=0.0, std=HEAD_INIT_STD)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    if bias is None or not layers:
        return
    if layers[-1].bias is None:
        raise UserError(f"the classifier ({type(layers[-1]).__name__}) has no bias to start at the label prior; "
                        "set loss.bias_init=zero")
    with torch.no_grad():
        layers[-1].bias.copy_(bias)


def head_name(model: nn.Module) -> str:
    """Dotted name of the classifier module: ``'fc'`` for ResNets, e.g. ``'head.fc'`` for timm's
    ConvNeXt."""
    return _head_names(model)[0]


def _classifiers(model: nn.Module) -> tuple[nn.Module, ...]:
    classifiers = model.get_classifier()
    # timm's distilled models return (head, head_dist); both are hashtag-specific.
    return classifiers if isinstance(classifiers, tuple) else (classifiers,)


def _head_names(model: nn.Module) -> list[str]:
    model = unwrap_model(model)
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(module)] for module in _classifiers(model)]


def reset_head(model: nn.Module, num_classes: int) -> nn.Module | tuple[nn.Module, ...]:
    """Replace the classifier by a fresh ``num_classes``-way one drawn from N(0, 0.01^2) (0: no
    classifier, the model returns pooled features) and return it (``get_classifier()``: a
    ``(head, head_dist)`` pair for timm's distilled models)."""
    model = unwrap_model(model)
    model.reset_classifier(num_classes)
    for classifier in _classifiers(model):
        _init_head(classifier)
    return model.get_classifier()


def pooled_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Globally pooled trunk features, ``N x model.num_features`` (the linear probe's input)."""
    model = unwrap_model(model)
    return model.forward_head(model.forward_features(images), pre_logits=True)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimiser groups, ``[decay, no_decay]``: conv and linear weights get ``weight_decay``;
    BN parameters and biases (every tensor with ndim <= 1) and timm's ``no_weight_decay()`` names
    get none, following Goyal et al. Frozen parameters (requires_grad False) are left out."""
    model = unwrap_model(model)
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]

"""torch.hub entry points: the official WSL-Images ResNeXt-101 32xCd models and openwsl exports.

    import torch
    # the released IG-940M pretrained, ImageNet-1k fine-tuned models (facebookresearch/WSL-Images)
    model = torch.hub.load("<openwsl checkout>", "resnext101_32x8d_wsl", source="local",
                           weights="ig_resnext101_32x8-c38310e5.pth")   # weights=None: download it
    # an export of an openwsl run (python -m transfer export <run> --out <folder>)
    model = torch.hub.load("<openwsl checkout>", "openwsl_model", source="local", folder="<folder>")

Every model comes in eval mode and carries a timm-style ``pretrained_cfg`` (input size, crop_pct,
interpolation, mean / std, ``label_names``), so ``timm.data.resolve_data_config(model=model)`` and
``timm.data.create_transform(**config)`` give its preprocessing: resize 256, centre crop 224,
ImageNet normalisation for the official models; the export's own for ours.
"""
from __future__ import annotations

dependencies = ["torch", "torchvision", "timm", "safetensors"]

# The official files, as facebookresearch/WSL-Images' hubconf names them (released under CC BY-NC 4.0).
WSL_URLS = {
    "resnext101_32x8d": "https://download.pytorch.org/models/ig_resnext101_32x8-c38310e5.pth",
    "resnext101_32x16d": "https://download.pytorch.org/models/ig_resnext101_32x16-c6f796b0.pth",
    "resnext101_32x32d": "https://download.pytorch.org/models/ig_resnext101_32x32-e4b90b00.pth",
    "resnext101_32x48d": "https://download.pytorch.org/models/ig_resnext101_32x48-3e41cc8a.pth",
}


def _wsl(name: str, weights: str | None, progress: bool):
    import torch
    from timm.data import ImageNetInfo

    from data.errors import UserError
    from pretrain.model import create_model
    from transfer.export import Preprocessing
    from transfer.init import load_into, read_weights

    model = create_model(name, 1000)
    if weights is None:
        state = torch.hub.load_state_dict_from_url(WSL_URLS[name], progress=progress, check_hash=True,
                                                   weights_only=True)
        source, kind = WSL_URLS[name], "state dict"
    else:
        (state, kind), source = read_weights(weights), str(weights)
    report = load_into(model, state, source=source, kind=kind, head="keep")
    if report.head != "loaded" or report.missing:
        raise UserError(f"{source}: not the official {name} WSL weights ({len(report.missing)} tensors missing, "
                        f"1000-way head {'loaded' if report.head == 'loaded' else 'absent or another shape'})")
    model.pretrained_cfg = {**Preprocessing().timm_config(), "architecture": name, "num_classes": 1000,
                            "label_names": ImageNetInfo("imagenet-1k").label_names(), "license": "cc-by-nc-4.0",
                            "origin_url": "https://github.com/facebookresearch/WSL-Images"}
    return model.eval()


def resnext101_32x8d_wsl(weights: str | None = None, progress: bool = True):
    """ResNeXt-101 32x8d, IG-940M hashtag pretraining + ImageNet-1k fine-tuning (82.2 top-1 published).
    ``weights``: a local ig_resnext101_32x8-c38310e5.pth; None downloads it (checked by its hash)."""
    return _wsl("resnext101_32x8d", weights, progress)


def resnext101_32x16d_wsl(weights: str | None = None, progress: bool = True):
    """ResNeXt-101 32x16d WSL (84.2 top-1 published); ``weights`` as for resnext101_32x8d_wsl."""
    return _wsl("resnext101_32x16d", weights, progress)


def resnext101_32x32d_wsl(weights: str | None = None, progress: bool = True):
    """ResNeXt-101 32x32d WSL (85.1 top-1 published); ``weights`` as for resnext101_32x8d_wsl."""
    return _wsl("resnext101_32x32d", weights, progress)


def resnext101_32x48d_wsl(weights: str | None = None, progress: bool = True):
    """ResNeXt-101 32x48d WSL (85.4 top-1 published); ``weights`` as for resnext101_32x8d_wsl."""
    return _wsl("resnext101_32x48d", weights, progress)


def openwsl_model(folder: str):
    """The model of an openwsl export folder (``python -m transfer export``), any architecture,
    including ones timm cannot build; ``model.pretrained_cfg["label_names"]`` holds its labels."""
    from transfer.export import load_export

    return load_export(folder).model

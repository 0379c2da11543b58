"""The transfer stage's config schema, built with pretraining's machinery (pretrain/config.py):
same YAML + ``section.key=value`` overrides, same one-line errors, same resolved ``config.yaml``.

``num_classes`` is not a key: it is inferred from the training data (or, for ``evaluate``, from
the evaluated split). ``python -m transfer.config`` prints the key reference (docs/transfer.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pretrain.config import (BATCH_MAX, BATCH_WHY, IMAGE_SIDE_MAX, IMAGE_SIDE_WHY, RESIZE_SIDE_MAX, WORKERS_MAX,
                             WORKERS_WHY, DistConfig, InvalidValue, PrecisionConfig, RunConfig, TrackingConfig,
                             config_reference, option, section)


@dataclass
class TransferDataConfig:
    train: str | None = option(None, "training split: an ImageFolder (<root>/<class>/<image>), labelled "
                               "WebDataset tars (<key>.cls + <key>.jpg) or a single .tar", aliases=("train_dir",))
    val: str | None = option(None, "evaluation split: an ImageFolder, ImageNet's flat val folder (with val_labels "
                             "or the devkit ground truth + synsets), or labelled WebDataset tars",
                             aliases=("val_dir",))
    kind: Literal["auto", "imagefolder", "imagenet_val", "wds"] = option(
        "auto", "layout of data.val (data.train: auto, imagefolder or wds); auto: detected from the files",
        aliases=("format", "layout"))
    val_labels: str | None = option(None, "flat val folder only: a file of '<filename> <wnid>' lines")
    synsets: str | None = option(None, "flat val folder with the devkit's ILSVRC2012_validation_ground_truth.txt: "
                                 "the 1,000 wnids in ILSVRC2012_ID order, one per line")
    batch_size: int = option(64, "images per rank per batch (evaluation and feature extraction)", min=1,
                             max=BATCH_MAX, why=BATCH_WHY, aliases=("batch",))
    workers: int = option(4, "DataLoader worker processes per rank", min=0, max=WORKERS_MAX, why=WORKERS_WHY,
                          aliases=("num_workers",))
    image_size: int = option(224, "centre-crop side in pixels", min=8, max=IMAGE_SIDE_MAX, why=IMAGE_SIDE_WHY,
                             aliases=("crop_size", "resolution"))
    resize_size: int = option(256, "short side the image is resized to before the centre crop", min=8,
                              max=RESIZE_SIDE_MAX, why=IMAGE_SIDE_WHY, aliases=("resize",))
    interpolation: Literal["bilinear"] = option("bilinear", "resize filter (Pillow bilinear, antialiased, as "
                                                "torchvision's Resize); recorded in every result file")
    max_pixels: int = option(100_000_000, "images with more pixels (from the header) are skipped undecoded",
                             min=1)

    def validate(self) -> None:
        if self.resize_size < self.image_size:
            raise InvalidValue("resize_size", f"must be >= data.image_size ({self.image_size}), got "
                               f"{self.resize_size}: the crop is taken from the resized image")


@dataclass
class TransferModelConfig:
    name: str = option("resnext101_32x8d", "model factory name (pretrain/model.py): resnext101_32x{4,8,16,32,48}d, "
                       "resnext_micro, resnext_tiny, resnext_small or a timm model", aliases=("arch", "architecture"))
    channels_last: bool = option(True, "NHWC memory format")


@dataclass
class LinearConfig:
    weight_decays: list[float] = option(factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2],
                                        help="L2 penalties tried (chosen on the held-out slice of the training set)",
                                        aliases=("wd", "weight_decay", "grid"))
    holdout_fraction: float = option(0.1, "fraction of the training set held out to choose the weight decay",
                                     above=0.0, max=0.5, aliases=("val_fraction",))
    max_iter: int = option(200, "L-BFGS iterations per fit (full batch)", min=1, aliases=("iterations",))
    cache_dir: str | None = option(None, "feature cache directory; null: <run dir>/features", aliases=("cache",))

    def validate(self) -> None:
        if not self.weight_decays:
            raise InvalidValue("weight_decays", "must list at least one value")
        if any(wd < 0 for wd in self.weight_decays):
            raise InvalidValue("weight_decays", f"must be >= 0, got {self.weight_decays}")


@dataclass
class FinetuneConfig:
    epochs: int = option(30, "passes over the training set", min=1)
    batch_size: int = option(32, "training images per rank per step (global batch = batch_size x world size)",
                             min=1, max=BATCH_MAX, why=BATCH_WHY, aliases=("batch",))
    base_lr: float = option(0.1, "learning rate per reference_batch images: peak lr = base_lr x global batch / "
                            "reference_batch", above=0.0, aliases=("lr", "learning_rate"))
    reference_batch: int = option(256, "the batch size base_lr is quoted for", min=1)
    momentum: float = option(0.9, "SGD momentum", min=0.0, max=1.0)
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(1e-4, "L2 weight decay on conv and linear weights (none on BN and biases)",
                                 min=0.0, aliases=("wd",))
    warmup_epochs: float = option(0.0, "linear warm-up from 0 to the peak lr over this many epochs", min=0.0,
                                  aliases=("warmup",))
    schedule: Literal["step", "cosine"] = option("cosine", "after warm-up: cosine to 0, or step (x decay_factor "
                                                 "at decay_steps equally spaced points)")
    decay_steps: int = option(2, "step decays over the post-warm-up epochs (schedule: step)", min=0)
    decay_factor: float = option(0.1, "lr multiplier at each step decay", above=0.0, max=1.0)
    label_smoothing: float = option(0.0, "mass spread uniformly over all classes in the target", min=0.0, max=0.5)
    ema_decay: float | None = option(None, "exponential moving average of the weights (e.g. 0.9998), evaluated "
                                     "and saved beside the model; null: off", above=0.0, max=1.0, aliases=("ema",))
    crop_scale_min: float = option(0.08, "RandomResizedCrop's smallest area fraction", above=0.0, max=1.0)
    clip_grad: float | None = option(None, "clip the global gradient L2 norm; null: no clipping", above=0.0)
    max_nonfinite_steps: int = option(20, "a step with a non-finite loss or gradient is skipped and counted; after "
                                      "this many in a row (checked every tracking.log_every_steps steps), or an "
                                      "epoch's end with no finite step since the run started, it stops with an "
                                      "error", min=1, aliases=("max_nan_steps", "max_skipped_steps"))
    keep_last: int = option(2, "numbered checkpoints kept (one per epoch; checkpoint-latest.pt -> newest)", min=1)
    resume: str = option("auto", "auto (continue from <run dir>/checkpoint-latest.pt), none, or a checkpoint path")

    def validate(self) -> None:
        if self.warmup_epochs >= self.epochs:
            raise InvalidValue("warmup_epochs", f"must be smaller than finetune.epochs ({self.epochs}), "
                               f"got {self.warmup_epochs}")


@dataclass
class TransferEvalConfig:
    plot: bool = option(True, "write the per-class accuracy / confusion plot (PNG)")
    predictions: bool = option(True, "write predictions.csv: every scored image with its target and top-5")
    zero_shot_vocab: str | None = option(None, "zero-shot: the pretraining vocab.json; the model's hashtag "
                                         "classifier is kept and mapped to the classes (wnid folders) "
                                         "through the labels' synsets", aliases=("vocab",))
    zero_shot_reduce: Literal["max", "logsumexp"] = option("max", "zero-shot: a class's score from the logits "
                                                           "of the hashtags carrying its synset")


@dataclass
class TransferRunConfig(RunConfig):
    name: str = option("transfer", "run name: the run directory is <dir>/<name>")


@dataclass
class TransferConfig:
    init: str | None = option(None, "initial weights: a pretraining checkpoint (checkpoint-*.pt or its run "
                              "directory), a trunk export (.safetensors), an official WSL / torchvision / timm "
                              "file (.pth, .pt, .safetensors); null: random init (the baseline)",
                              aliases=("weights", "checkpoint", "pretrained"))
    data: TransferDataConfig = section(TransferDataConfig, "datasets and the eval transform")
    model: TransferModelConfig = section(TransferModelConfig, "the network")
    finetune: FinetuneConfig = section(FinetuneConfig, "full fine-tuning (SGD, warm-up, cosine or step)")
    linear: LinearConfig = section(LinearConfig, "linear probe on frozen pooled features")
    eval: TransferEvalConfig = section(TransferEvalConfig, "evaluation outputs and zero-shot")
    precision: PrecisionConfig = section(PrecisionConfig, "mixed precision (autocast on CUDA)")
    dist: DistConfig = section(DistConfig, "torch.distributed")
    tracking: TrackingConfig = section(TrackingConfig, "metrics.jsonl and wandb")
    run: TransferRunConfig = section(TransferRunConfig, "the run directory and seed")

    def validate(self) -> None:
        if not self.data.val:
            raise InvalidValue("data.val", "is required: set it in the config file or pass data.val=<directory>")


if __name__ == "__main__":
    print(config_reference(TransferConfig), end="")

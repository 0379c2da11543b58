"""Transfer: fine-tuning, linear probe and evaluation of pretrained (or official, or random) ResNeXt weights,
and models out: export for timm / the Hugging Face Hub, and predict.

``torchrun --nproc_per_node=N -m transfer {finetune,linear,evaluate} --config configs/transfer/<recipe>.yaml [key=value ...]``
``python -m transfer export <run dir | model file> --out <folder> [--trunk-only] [--push-to-hub <repo>]``
``python -m transfer predict --model <export folder | run dir> <images or folders...> [--top-k 5] [--json]``

Examples::

    python -m transfer evaluate --config configs/transfer/wsl_32x8d_eval.yaml \\
        init=/models/ig_resnext101_32x8-c38310e5.pth data.val=/data/imagenet/val
    torchrun --nproc_per_node=8 -m transfer linear --config configs/transfer/resnext101_32x8d_in1k_linear.yaml \\
        init=runs/pretrain/trunk.safetensors
    python -m transfer evaluate --config configs/transfer/cpu_demo_eval.yaml \\
        init=runs/demo/linear/linear_model.safetensors
    torchrun --nproc_per_node=8 -m transfer finetune --config configs/transfer/resnext101_32x8d_in1k_finetune.yaml \\
        init=runs/pretrain/trunk.safetensors

A run writes <run.dir>/<run.name>/: config.yaml, metrics.jsonl, summary.json and, for finetune,
checkpoint-*.pt (resumed automatically) + model-last/best(/ema).safetensors; for evaluate,
eval.json + predictions.csv + eval_per_class.png; for linear, linear.json + linear_model.safetensors
and the feature cache (features/); each of them also run.json (the kind of run: a directory holding
another kind is refused) and run.lock while it runs. Keys: docs/transfer.md (`python -m transfer.config`).
export writes <folder>/model.safetensors + config.json (timm's Hugging Face layout) + README.md; predict
prints the top-k labels of each image (docs/transfer.md, "Models out").
"""
from __future__ import annotations

import argparse

from data.errors import cli_main
from pretrain.config import load_config
from transfer import export, predict
from transfer.commands import run_evaluate, run_linear
from transfer.config import TransferConfig
from transfer.finetune import run_finetune

COMMANDS = {
    "finetune": (run_finetune, "fine-tune the whole network with a new head for data.train's classes (SGD, "
                               "warm-up, cosine or step, optional label smoothing and EMA), evaluating data.val "
                               "every epoch; checkpoints and resume as in pretraining"),
    "linear": (run_linear, "train a logistic-regression probe on frozen pooled features (weight decay chosen "
                           "on a held-out slice of the training set) and report val top-1 / top-5"),
    "evaluate": (run_evaluate, "top-1 / top-5 and per-class accuracy of init's classifier on data.val "
                               "(or zero-shot from the hashtag classifier with eval.zero_shot_vocab)"),
}
# Commands without a recipe: they read what a run wrote.
MODEL_COMMANDS = {
    "export": (export, "write a run (hashtag or class head, its labels) or a trunk as a folder in timm's Hugging "
                       "Face layout: model.safetensors + config.json (+ README.md), loadable with "
                       "timm.create_model('local-dir:<folder>', pretrained=True); optionally upload it"),
    "predict": (predict, "print the top-k labels (hashtags or classes) with probabilities of image files and "
                         "folders, from an export folder or a run"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m transfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{" + ",".join([*COMMANDS, *MODEL_COMMANDS]) + "}")
    for name, (_, summary) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.add_argument("--config", required=True, help="recipe YAML file (configs/transfer/*.yaml)")
        sub.add_argument("overrides", nargs="*", metavar="key=value",
                         help="config overrides, each value parsed as YAML (e.g. init=runs/x/trunk.safetensors "
                              "data.batch_size=128)")
        if name == "finetune":
            debug = sub.add_argument_group("debugging and tests (not part of a recipe)")
            debug.add_argument("--stop-after-epochs", type=int, metavar="N",
                               help="checkpoint and stop cleanly after N epochs (the schedule stays that of "
                                    "finetune.epochs, so running again without it resumes the same run)")
    subparsers = {}
    for name, (module, summary) in MODEL_COMMANDS.items():
        subparsers[name] = commands.add_parser(name, help=summary, description=summary,
                                               epilog='details: docs/transfer.md, "Models out"')
        module.add_arguments(subparsers[name])
    args = parser.parse_args(argv)
    if args.command == "predict":
        predict.check_arguments(subparsers["predict"], args)
    if getattr(args, "stop_after_epochs", None) is not None and args.stop_after_epochs < 1:
        parser.error(f"--stop-after-epochs must be >= 1, got {args.stop_after_epochs}")
    return args


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "export":
        export.run_export(args)
        return
    if args.command == "predict":
        predict.run_predict(args)
        return
    config = load_config(args.config, args.overrides, schema=TransferConfig)
    if args.command == "finetune":
        run_finetune(config, stop_after_epochs=args.stop_after_epochs)
    else:
        COMMANDS[args.command][0](config)


if __name__ == "__main__":
    main()

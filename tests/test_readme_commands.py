"""Every command the README shows exists, and its --help works.

A README that drifts from the code is the first thing a new user hits, so the commands in its code
blocks are parsed and checked: scripts exist and answer --help, `-m` modules (and their
subcommands) answer --help, make targets exist, and the SLURM script parses. Beyond existence, the
arguments shown must be accepted: every script flag by the script's own parser, every torchrun
flag by torchrun's, and every `--config` recipe with its `section.key=value` overrides by the
config schema (an unknown or misspelt key fails here, not on a user's cluster). Every path under
configs/, docs/ and scripts/ that the README names must exist, and a ```console transcript must
show what the command really prints.

Fences: ```bash holds this project's commands, all checked; ```sh holds other tools' commands
(aws, img2dataset, ...), which this machine cannot run, and must not hide a project command.
"""
from __future__ import annotations

import argparse
import functools
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
# Paths of the repository the README may name; the ones it names must exist.
REPO_PATH = re.compile(r"(?<![\w./-])((?:configs|docs|scripts)/[\w./-]*\w\.(?:yaml|md|py|sbatch))")


def fenced_blocks(language: str) -> list[str]:
    """The bodies of the README's code blocks fenced as ```<language>."""
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"^[ \t]*```{language}\n(.*?)^[ \t]*```", text, flags=re.S | re.M)


def block_commands(block: str) -> list[list[str]]:
    """A shell block's commands, continuation lines joined, comments dropped, split into words."""
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            commands.append(shlex.split(line))
    return commands


def without_env(words: list[str]) -> list[str]:
    """``words`` without leading ``NAME=value`` environment assignments (``OMP_NUM_THREADS=1 torchrun …``)."""
    start = 0
    while start < len(words) and ENV_ASSIGNMENT.match(words[start]):
        start += 1
    return words[start:]


def readme_commands() -> list[list[str]]:
    """The shell commands in the README's ```bash blocks, continuation lines joined, comments dropped."""
    return [without_env(words) for block in fenced_blocks("bash") for words in block_commands(block)]


def module_call(words: list[str]) -> tuple[str, list[str]] | None:
    """(module, its arguments) of a ``python -m …`` or ``torchrun … -m …`` command, else None."""
    if "-m" not in words:
        return None
    at = words.index("-m")
    return words[at + 1], words[at + 2:]


def help_invocation(words: list[str]) -> list[str] | None:
    """The `--help` call that proves ``words`` names a real entry point (None: checked otherwise)."""
    if words[0] == "python" and words[1].endswith(".py"):
        return [sys.executable, str(REPO / words[1]), "--help"]
    if words[0] == "wandb":
        return [sys.executable, "-m", "wandb", words[1], "--help"]
    if "-m" in words:
        module, after = module_call(words)
        sub = [after[0]] if after and not after[0].startswith("-") else []
        return [sys.executable, "-m", module, *sub, "--help"]
    return None


def sbatch_script(words: list[str]) -> int:
    """Index of the batch script in an ``sbatch [options] script [args]`` command."""
    return next(i for i, word in enumerate(words) if word.endswith(".sbatch"))


@functools.cache
def run_help(call: tuple[str, ...]) -> subprocess.CompletedProcess:
    # Many README commands share an entry point (every torchrun line is `-m pretrain` or `-m transfer`).
    return subprocess.run(call, cwd=REPO, capture_output=True, text=True, timeout=120)


COMMANDS = readme_commands()


def test_the_readme_shows_the_two_commands_first():
    assert COMMANDS[:2] == [["make", "demo"], ["make", "test"]]


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(c[:4]) for c in COMMANDS])
def test_readme_command_exists_and_answers_help(words):
    if words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M)
        assert words[1] in targets, f"make {words[1]}: no such target in the Makefile"
        return
    if words[0] == "sbatch":
        script = REPO / words[sbatch_script(words)]
        assert script.is_file(), f"{script.relative_to(REPO)} does not exist"
        subprocess.run(["bash", "-n", str(script)], check=True)
        return
    call = help_invocation(words)
    assert call is not None, f"the README shows a command this test does not know how to check: {words}"
    done = run_help(tuple(call))
    assert done.returncode == 0, f"{' '.join(words[:4])} --help failed:\n{done.stderr[-2000:]}"
    assert "usage" in done.stdout.lower(), done.stdout[:500]


# --- the arguments the README shows are accepted -----------------------------------------------


class ArgumentsAccepted(BaseException):
    """Raised right after a script's parser accepted its arguments, so the script does no work.

    A BaseException, so that no ``except Exception`` in the script (or ``cli_main``) swallows it."""


def config_call(words: list[str]) -> tuple[str, list[str], str] | None:
    """(config path, overrides, stage) of a command that runs pretraining or transfer, else None."""
    if words[0] == "sbatch":
        args = words[sbatch_script(words) + 1:]
        return args[0], args[1:], "pretrain"
    call = module_call(words)
    if call is None or call[0] not in ("pretrain", "transfer"):
        return None
    module, args = call
    if module == "pretrain":
        from pretrain.__main__ import parse_args
    else:
        from transfer.__main__ import parse_args
    parsed = parse_args(args)
    if getattr(parsed, "config", None) is None:  # transfer export / predict take no recipe
        return None
    return parsed.config, parsed.overrides, module


def check_config(config: str, overrides: list[str], stage: str) -> None:
    """The recipe exists and it, with the overrides, passes the schema (paths are not required)."""
    from pretrain.config import PretrainConfig, load_config
    from transfer.config import TransferConfig

    assert (REPO / config).is_file(), f"--config {config}: no such recipe"
    load_config(REPO / config, overrides, schema=PretrainConfig if stage == "pretrain" else TransferConfig)


def check_torchrun_flags(words: list[str]) -> None:
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(words[1:])
    assert args.module, "torchrun in the README must run a module (-m pretrain / -m transfer)"


def check_script_flags(words: list[str], monkeypatch) -> None:
    """Run the script as `python script args` would, stopping as soon as its parser accepted them."""
    script = REPO / words[1]
    original = {name: getattr(argparse.ArgumentParser, name) for name in ("parse_args", "parse_intermixed_args")}

    def accepting(name):
        def parse(self, *args, **kwargs):
            original[name](self, *args, **kwargs)  # exits with status 2 on an unknown or bad flag
            raise ArgumentsAccepted
        return parse

    for name in original:
        monkeypatch.setattr(argparse.ArgumentParser, name, accepting(name))
    monkeypatch.setattr(sys, "argv", [str(script), *words[2:]])
    monkeypatch.syspath_prepend(str(script.parent))  # as `python script` puts the script's folder first
    with pytest.raises(ArgumentsAccepted):
        runpy.run_path(str(script), run_name="__main__")


ARGUMENT_CHECKED = [c for c in COMMANDS if c[0] in ("python", "torchrun", "sbatch")]
# Batch scripts that hand their arguments to a script of ours (the others take a pretraining recipe).
SBATCH_RUNS_SCRIPT = {"scripts/slurm/build_shards.sbatch": "scripts/build_shards.py"}


@pytest.mark.parametrize("words", ARGUMENT_CHECKED, ids=[" ".join(c[:6]) for c in ARGUMENT_CHECKED])
def test_readme_command_arguments_are_accepted(words, monkeypatch):
    if words[0] == "sbatch" and words[sbatch_script(words)] in SBATCH_RUNS_SCRIPT:
        at = sbatch_script(words)
        check_script_flags(["python", SBATCH_RUNS_SCRIPT[words[at]], *words[at + 1:]], monkeypatch)
        return
    if words[0] == "torchrun":
        check_torchrun_flags(words)
    if words[0] == "python" and words[1].endswith(".py"):
        check_script_flags(words, monkeypatch)
    config = config_call(words)
    if config is not None:
        check_config(*config)


# --- paths, other tools, transcripts -------------------------------------------------------------


def test_every_repository_path_the_readme_names_exists():
    named = sorted(set(REPO_PATH.findall(README.read_text(encoding="utf-8"))))
    assert len(named) > 10, f"the path pattern found too little to be working: {named}"
    missing = [path for path in named if not (REPO / path).is_file()]
    assert not missing, f"README.md names files that do not exist: {', '.join(missing)}"


def test_other_tools_blocks_hold_no_project_command():
    for block in fenced_blocks("sh"):
        for words in map(without_env, block_commands(block)):
            project = (words[0] in ("python", "torchrun", "make", "sbatch", "wandb")
                       or (module_call(words) or ("",))[0] in ("pretrain", "transfer"))
            assert not project, f"a project command in a ```sh block escapes the checks; move it to ```bash: {words}"


def console_transcripts() -> list[tuple[str, str]]:
    """(command, expected output) pairs of the README's ```console blocks (`$ command` then output)."""
    pairs = []
    for block in fenced_blocks("console"):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = chunk.partition("\n")
            pairs.append((command, output.strip()))
    return pairs


def replay(words: list[str], monkeypatch, capsys) -> str:
    """What ``python -m module …`` or ``python script.py …`` prints, run in this process (the
    interpreter and torch are loaded already): stdout and stderr together."""
    assert words[0] == "python", f"only python commands are replayed: {words}"
    module = words[2] if words[1] == "-m" else None
    args = words[3:] if module else words[2:]
    monkeypatch.setattr(sys, "argv", [module or str(REPO / words[1]), *args])
    if module:  # imported by the argument checks: runpy must execute it afresh, as `python -m` does
        monkeypatch.delitem(sys.modules, f"{module}.__main__", raising=False)
    with pytest.raises(SystemExit):  # cli_main: `error: …` and exit status 2
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(REPO / words[1]), run_name="__main__")
    captured = capsys.readouterr()
    return (captured.out + captured.err).strip()


@pytest.mark.parametrize("command, expected", console_transcripts())
def test_readme_console_transcript_is_what_the_command_prints(command, expected, monkeypatch, capsys):
    printed = replay(shlex.split(command), monkeypatch, capsys)
    assert printed == expected, f"README.md shows for `{command}`:\n{expected}\nbut it prints:\n{printed}"


def test_the_argument_checks_catch_what_drifts(monkeypatch):
    """The checks above can fail: a renamed flag, a misspelt key, a wrong torchrun flag."""
    from data.errors import UserError

    with monkeypatch.context() as patched, pytest.raises(SystemExit):
        check_script_flags(["python", "scripts/build_vocab.py", "--source", "yfcc100m", "--input", "x",
                            "--out", "v.json", "--topk", "10"], patched)
    with pytest.raises(UserError, match="did you mean optim.base_lr"):
        check_config("configs/pretrain/cpu_demo.yaml", ["optim.lerning_rate=0.1"], "pretrain")
    with pytest.raises(SystemExit):
        check_torchrun_flags(["torchrun", "--nproc-per-gpu=8", "-m", "pretrain"])

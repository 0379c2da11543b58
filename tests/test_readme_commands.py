"""Every command the README shows exists, and its --help works.

A README that drifts from the code is the first thing a new user hits, so the commands in its code
blocks are parsed and checked: scripts exist and answer --help, `-m` modules (and their
subcommands) answer --help, make targets exist, and the SLURM script parses.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    """The shell commands in the README's ```bash blocks, continuation lines joined, comments dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def help_invocation(words: list[str]) -> list[str] | None:
    """The `--help` call that proves ``words`` names a real entry point (None: checked otherwise)."""
    if words[0] == "python" and words[1].endswith(".py"):
        return [sys.executable, str(REPO / words[1]), "--help"]
    if "-m" in words:
        module = words[words.index("-m") + 1]
        after = words[words.index("-m") + 2:]
        sub = [after[0]] if after and not after[0].startswith("-") else []
        return [sys.executable, "-m", module, *sub, "--help"]
    return None


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
        script = REPO / words[1]
        assert script.is_file(), f"{words[1]} does not exist"
        subprocess.run(["bash", "-n", str(script)], check=True)
        return
    call = help_invocation(words)
    assert call is not None, f"the README shows a command this test does not know how to check: {words}"
    done = subprocess.run(call, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(words[:4])} --help failed:\n{done.stderr[-2000:]}"
    assert "usage" in done.stdout.lower(), done.stdout[:500]

"""One run directory, one run: a run locks its directory while it writes it (run.lock, naming the
holder's host and pid), a second run stops with one line naming the holder, the lock of a process
that died is taken over with one line, and no run writes into a directory holding another kind of
run (run.json). Real processes throughout: POSIX locks are per process, so a lock can only be
contended from another one."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pretrain.__main__ import main as pretrain_main
from pretrain.checkpoint import LATEST, load_checkpoint
from pretrain.config import load_config
from pretrain.train import DebugOptions, train
from tests.faults.run_checks import one_error_line, train_rows
from tests.pretrain_runs import REPO, job_env, make_shards, torchrun, write_config
from tests.transfer_factory import colour_task
from transfer.__main__ import main as transfer_main

HOST = socket.gethostname()
KIND_FILE, LOCK_FILE = "run.json", "run.lock"  # (pretrain/run_directory.py)
_HOLDER = """
import sys, time
from pathlib import Path
from pretrain.run_directory import RunLock
RunLock.claim(Path(sys.argv[1]), sys.argv[2])
print("held", flush=True)
time.sleep(600)
"""



def _hold(run_dir: Path, kind: str = "pretrain") -> subprocess.Popen:
    """Another process holding ``run_dir`` (claimed as a ``kind`` run) until it is killed."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run_dir), kind], cwd=REPO, env=job_env(),
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.fixture
def config(tmp_path) -> Path:
    shards, _ = make_shards(tmp_path)
    return write_config(tmp_path / "run.yaml", shards, None, tmp_path / "runs", "one", data={"workers": 0},
                        optim={"total_images": 32, "warmup_images": 0})


@pytest.mark.slow
def test_two_runs_started_together_into_one_directory_one_runs_the_other_stops_and_nothing_mixes(tmp_path, config):
    # The same run directory, told apart by their seeds.
    configs = []
    for seed in (1, 2):
        data = yaml.safe_load(config.read_text())
        data["run"]["seed"] = seed
        data["optim"]["total_images"] = 96
        configs.append(tmp_path / f"seed{seed}.yaml")
        configs[-1].write_text(yaml.safe_dump(data))
    runs = [subprocess.Popen([sys.executable, "-m", "pretrain", "--config", str(c)], cwd=REPO, env=job_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in configs]
    outputs = [run.communicate(timeout=300) for run in runs]
    codes = [run.returncode for run in runs]
    assert sorted(codes) == [0, 2], [(c, err[-2000:]) for c, (_, err) in zip(codes, outputs)]
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    err = outputs[loser][1]
    assert "Traceback" not in err, err[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    run_dir = tmp_path / "runs" / "one"
    assert line.startswith(f"error: run directory {run_dir} is in use by pid {runs[winner].pid} on {HOST} (a "
                           f"pretrain run, since "), line
    assert line.endswith(f"which holds {run_dir / LOCK_FILE}; wait for it to end or choose another run.name")
    # Everything in the directory is the winner's, once.
    seed = winner + 1
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run"]["seed"] == seed
    assert load_checkpoint(run_dir / LATEST)["config"]["run"]["seed"] == seed
    steps = [row["step"] for row in train_rows(run_dir)]
    assert steps == sorted(set(steps)), f"metrics.jsonl holds one run's steps, each once: {steps}"
    assert train_rows(run_dir)[-1]["images"] == 96
    assert not (run_dir / LOCK_FILE).exists() and not [p for p in run_dir.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_a_held_lock_stops_the_run_and_the_lock_of_a_killed_holder_is_taken_over(tmp_path, config, one_thread,
                                                                                  capsys):
    run_dir = tmp_path / "runs" / "one"
    holder = _hold(run_dir)
    try:
        line = one_error_line(pretrain_main, ["--config", str(config)], capsys)
        assert line.startswith(f"error: run directory {run_dir} is in use by pid {holder.pid} on {HOST} (a pretrain "
                               "run, since "), line
        assert sorted(p.name for p in run_dir.iterdir()) == [KIND_FILE, LOCK_FILE], "the refused run wrote nothing"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder died without releasing its lock: the next run takes it over, saying so, and runs.
    pretrain_main(["--config", str(config)])
    out = capsys.readouterr().out
    (note,) = [line for line in out.splitlines() if "stale lock" in line]
    assert note.startswith(f"took over the stale lock {run_dir / LOCK_FILE} of pid {holder.pid} on {HOST} (a "
                           "pretrain run, since ") and note.endswith("that process ended without releasing it")
    assert train_rows(run_dir)[-1]["images"] == 32 and not (run_dir / LOCK_FILE).exists()


@pytest.mark.slow
def test_under_torchrun_every_rank_stops_at_a_held_lock_without_waiting_on_the_others(tmp_path, config):
    run_dir = tmp_path / "runs" / "one"
    holder = _hold(run_dir)
    try:
        start = time.monotonic()
        # A rank left waiting in a collective would hang until dist.timeout_s (600 s).
        done = torchrun(["--config", str(config), "dist.timeout_s=600"], job_env(), timeout=240)
        seconds = time.monotonic() - start
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert done.returncode != 0 and seconds < 120, (done.returncode, seconds, done.stderr[-3000:])
    refusals = [line for line in done.stderr.splitlines()
                if line.startswith(f"error: run directory {run_dir} is in use by pid {holder.pid} on {HOST}")]
    assert refusals, done.stderr[-3000:]
    print(f"torchrun stopped after {seconds:.1f} s; {len(refusals)} rank(s) printed the refusal")
    assert not any(p.name == "config.yaml" for p in run_dir.iterdir())


@pytest.mark.slow
def test_a_transfer_run_refuses_a_directory_holding_a_pretraining_run(tmp_path, config, one_thread, capsys):
    train(load_config(config), DebugOptions(stop_after_images=16))
    run_dir = tmp_path / "runs" / "one"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    train_dir, val_dir, weights = colour_task(tmp_path / "transfer", 8, 2)
    argv = ["finetune", "--config", str(REPO / "configs/transfer/cpu_demo_finetune.yaml"), f"init={weights}",
            f"data.train={train_dir}", f"data.val={val_dir}", f"run.dir={tmp_path / 'runs'}", "run.name=one",
            "data.workers=0", "finetune.epochs=1", "finetune.warmup_epochs=0"]
    line = one_error_line(transfer_main, argv, capsys)
    assert line == (f"error: run directory {run_dir} holds a pretrain run ({KIND_FILE}), not a finetune run; a run "
                    "writes only into a directory of its own kind: choose another run.name (or run.dir). Nothing "
                    "was written")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before, "config.yaml and all kept"
    # A directory written before run.json existed is known by its config.yaml.
    os.unlink(run_dir / KIND_FILE)
    before.pop(KIND_FILE)
    line = one_error_line(transfer_main, argv, capsys)
    assert line.startswith(f"error: run directory {run_dir} holds a pretrain run (its config.yaml), not a finetune run")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before

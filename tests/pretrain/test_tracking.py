"""pretrain/tracking.py: metrics.jsonl always, wandb offline runs that hold the logged keys and resume."""
from __future__ import annotations

import json
import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.errors import UserError
from pretrain.tracking import METRICS_FILE, SUMMARY_FILE, WANDB_ID_FILE, Tracker, read_metrics

CONFIG = {"optim": {"base_lr": 0.1, "schedule": "step"}, "run": {"name": "t", "seed": 0}}


def test_metrics_jsonl_rows_are_written_and_flushed_at_once(tmp_path):
    tracker = Tracker(tmp_path, CONFIG)
    tracker.log(10, {"loss": torch.tensor(2.5), "lr": np.float32(0.125), "images": np.int64(640),
                     "skipped": {"bad_jpeg": 2}, "grad_norm": float("nan")})
    # Readable before finish(): a crash right after a log step loses nothing.
    rows = read_metrics(tmp_path)
    assert len(rows) == 1
    row = rows[0]
    assert row["step"] == 10 and row["loss"] == 2.5 and row["lr"] == 0.125 and row["images"] == 640
    assert row["skipped"] == {"bad_jpeg": 2} and row["grad_norm"] is None
    assert abs(row["time"] - time.time()) < 60
    for line in (tmp_path / METRICS_FILE).read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    tracker.log(20, {"loss": 2.0})
    png = tmp_path / "plots" / "labels.png"
    png.parent.mkdir()
    Image.new("RGB", (8, 8), "red").save(png)
    tracker.log_image("plot/label_distribution", png)
    tracker.summary({"final_loss": 2.0})
    tracker.summary({"p_at_1": 0.5})
    tracker.finish()
    tracker.finish()  # idempotent
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [10, 20, 20]
    assert rows[-1]["plot/label_distribution"] == "plots/labels.png"
    assert json.loads((tmp_path / SUMMARY_FILE).read_text()) == {"final_loss": 2.0, "p_at_1": 0.5}
    with pytest.raises(TypeError, match=r"metric 'bad' has a value of type object"):
        Tracker(tmp_path, CONFIG).log(1, {"bad": object()})


def test_non_main_ranks_write_nothing(tmp_path):
    tracker = Tracker(tmp_path / "run", CONFIG, wandb_mode="offline", is_main=False)
    tracker.log(1, {"loss": 1.0})
    tracker.summary({"x": 1})
    tracker.finish()
    assert not (tmp_path / "run").exists()
    assert tracker.sync_command is None


def test_restart_drops_rows_logged_after_the_resumed_checkpoint(tmp_path):
    with Tracker(tmp_path, CONFIG) as tracker:
        for step in (10, 20, 30, 40):
            tracker.log(step, {"loss": 1.0 / step})
    with (tmp_path / METRICS_FILE).open("a") as f:
        f.write('{"step": 50, "loss"')  # the line the killed process was writing
    with Tracker(tmp_path, CONFIG, resume_step=20) as tracker:
        tracker.log(30, {"loss": 0.5})
    assert [r["step"] for r in read_metrics(tmp_path)] == [10, 20, 30]
    assert read_metrics(tmp_path)[-1]["loss"] == 0.5


def test_online_mode_without_a_login_is_one_clear_error(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    with pytest.raises(UserError, match=r"^wandb \(online\) could not start: .*; run `wandb login` or set "
                                        r"WANDB_API_KEY for online mode, or use tracking.wandb=offline$"):
        Tracker(tmp_path / "run", CONFIG, wandb_mode="online")


# -- wandb offline --------------------------------------------------------------------------------

def _wandb_log_records(path: Path) -> list[bytes]:
    """The records of a .wandb file: wandb's LevelDB-style log (7-byte header ':W&B' + magic +
    version, 32 KiB blocks, each record a 7-byte header crc32/length/type then its bytes)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too small for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            break
        chunk, pos = data[pos:pos + length], pos + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    return records


def _read_wandb_run(path: Path, timeout_s: float = 120.0) -> dict:
    """History rows, summary, config and tags from a finished offline run's .wandb file. wandb-core
    writes the file asynchronously (on a loaded machine, seconds after finish() returns), so read it
    until its final 'exit' record is there; a record still being written is read again."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout_s
    while True:
        parsed = []
        try:
            for raw in _wandb_log_records(path) if path.is_file() and path.stat().st_size >= 7 else []:
                record = pb.Record()
                record.ParseFromString(raw)
                parsed.append(record)
        except DecodeError:                       # the tail record was cut mid-write: read again
            parsed = []
        if any(r.WhichOneof("record_type") == "exit" for r in parsed):
            break
        assert time.monotonic() < deadline, f"{path} has no 'exit' record after {timeout_s:.0f} s"
        time.sleep(0.2)
    run = {"history": [], "summary": {}, "config": {}, "tags": [], "kinds": set()}
    for record in parsed:
        kind = record.WhichOneof("record_type")
        run["kinds"].add(kind)
        if kind == "history":
            run["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.history.item})
        elif kind == "summary":
            run["summary"].update({item.key: json.loads(item.value_json) for item in record.summary.update
                                   if item.key})
        elif kind == "run":
            run["config"] = {item.key: json.loads(item.value_json) for item in record.run.config.update}
            run["tags"] = list(record.run.tags)
    return run


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path / "run"


def test_wandb_offline_run_holds_the_logged_keys_and_a_restart_resumes_it(offline_wandb):
    run_dir = offline_wandb
    tracker = Tracker(run_dir, CONFIG, wandb_mode="offline", project="openwsl-test", name="unit",
                      tags=["pretrain", "cpu"])
    # The id the Tracker keeps for a restart is the one wandb runs under (its folder and log are named by it).
    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    assert re.fullmatch(r"[a-z0-9]{8}", run_id)
    for step in (1, 2, 3):
        tracker.log(step, {"train/loss": 1.0 / step, "train/lr": 0.1 * step, "train/images_per_s": 100.0})
    png = run_dir / "labels.png"
    Image.new("RGB", (16, 16), "blue").save(png)
    tracker.log_image("plots/label_distribution", png, step=3)
    tracker.summary({"eval/precision_at_1": 0.42})
    first_dir = tracker.wandb_dir
    assert first_dir.parent == run_dir / "wandb" and first_dir.name.endswith(f"-{run_id}")
    assert tracker.sync_command == f"wandb sync {first_dir}"
    tracker.finish()

    run = _read_wandb_run(first_dir / f"run-{run_id}.wandb")
    logged = [row for row in run["history"] if "train/loss" in row]
    assert [(r["step"], r["train/loss"], r["train/lr"]) for r in logged] == [
        (1, 1.0, 0.1), (2, 0.5, 0.2), (3, 1.0 / 3, 0.1 * 3)]
    (image,) = [row for row in run["history"] if "plots/label_distribution/_type" in row]
    assert image["plots/label_distribution/_type"] == "image-file" and image["step"] == 3
    assert (first_dir / "files" / image["plots/label_distribution/path"]).is_file()
    assert run["summary"]["eval/precision_at_1"] == 0.42
    assert run["config"]["optim"] == CONFIG["optim"] and run["config"]["run"] == CONFIG["run"]
    assert run["tags"] == ["pretrain", "cpu"]
    # metrics.jsonl is kept alongside.
    assert [r["step"] for r in read_metrics(run_dir) if "train/loss" in r] == [1, 2, 3]

    # A restarted process (same run directory) continues the same wandb run, even at earlier steps.
    tracker = Tracker(run_dir, CONFIG, wandb_mode="offline", project="openwsl-test", resume_step=2)
    assert (run_dir / WANDB_ID_FILE).read_text().strip() == run_id
    tracker.log(3, {"train/loss": 0.25})
    second_dir = tracker.wandb_dir
    tracker.finish()
    # wandb names an offline run's folder offline-run-<time>-<id>, adding -1, -2 ... when a folder of
    # that name exists (both runs in the same second).
    assert second_dir != first_dir and re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", second_dir.name)
    rerun = _read_wandb_run(second_dir / f"run-{run_id}.wandb")
    assert [(r["step"], r["train/loss"]) for r in rerun["history"] if "train/loss" in r] == [(3, 0.25)]

"""scripts/gpu_check.py --dry-run: every phase of the GPU check at toy sizes on the CPU, so the script
keeps working between the occasions a GPU is at hand. One run, with a model name that does not
exist beside resnext_micro: its failure is recorded and every later phase still runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
EAGER = {"fp32_eager", "bf16_cl_eager", "bf16_cl_eager_cudnn_benchmark"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, list[dict], Path]:
    out = tmp_path_factory.mktemp("gpu-check")
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--time-limit", "900",
                           "--models", "resnext_micro,no_such_model"],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return done, rows, out


def _phase_status(rows: list[dict]) -> dict[str, str]:
    return {r["phase"]: r["status"] for r in rows if "status" in r and "model" not in r and "decode" not in r}


def test_every_phase_runs_and_a_failure_stays_in_its_phase(dry_run):
    done, rows, _ = dry_run
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # a phase failed: the exit says so
    assert _phase_status(rows) == {"env": "ok", "tests": "ok", "throughput": "error", "e2e": "ok", "decode": "ok",
                                   "compiled": "error"}, done.stdout[-3000:]
    errors = [r["error"] for r in rows if r.get("status") == "error" and "error" in r]
    assert len(errors) == 2 and all("no_such_model" in e and "resnext_micro" not in e for e in errors), errors
    for phase in ("env", "tests", "throughput", "e2e", "decode", "compiled"):
        assert f"== {phase}: budget " in done.stdout


def test_the_cuda_tests_ran_and_skipped_with_the_reason(dry_run):
    _, rows, out = dry_run
    (tests,) = [r for r in rows if r["phase"] == "tests" and "tests" in r]
    assert tests["exit_code"] == 0 and tests["passed"] == tests["failed"] == 0
    assert tests["skipped"] == len(tests["tests"]) >= 7
    assert all("needs a CUDA GPU" in t["message"] for t in tests["tests"])
    assert "tests/pretrain/test_engine.py" in tests["files"] and "tests/data/loader/test_gpu_decode.py" in tests["files"]
    assert (out / "tests.log").is_file()


def test_the_step_is_timed_in_every_mode_with_and_without_the_guard(dry_run):
    _, rows, _ = dry_run
    figures = {r["mode"]: r for r in rows if r["phase"] in ("throughput", "compiled") and "images_per_s" in r}
    assert set(figures) == EAGER | {"bf16_cl_compiled"}
    for mode, row in figures.items():
        assert row["model"] == "resnext_micro" and row["device"] == "cpu" and row["batch_size"] == 4
        assert row["images_per_s"] > 0 and row["images_per_s_without_guard"] > 0, mode
        assert len(row["images_per_s_rounds"]) == len(row["images_per_s_without_guard_rounds"]) == 2
        assert row["nonfinite_steps"] == 0 and row["loss"] > 0
    assert figures["bf16_cl_compiled"]["compiled_backend"] == "aot_eager"
    for mode in EAGER:  # the guard dispatches a fixed handful of ops (tests/pretrain/test_engine.py)
        assert figures[mode]["guard_ops"] == 8 and figures[mode]["step_ops"] > 100


def test_the_end_to_end_runs_train_on_the_shards_they_built(dry_run):
    _, rows, out = dry_run
    (shards,) = [r for r in rows if r["phase"] == "e2e-shards"]
    assert shards["error"] is None and set(shards["seconds"]) == {"world", "vocab", "shards"}
    runs = [r for r in rows if r["phase"] == "e2e" and "exit_code" in r]
    assert [(r["decode"], r["workers"]) for r in runs] == [("cpu", 1), ("cpu", 2)]
    for run in runs:
        assert run["exit_code"] == 0 and not run["timed_out"]
        assert run["images"] == run["planned_images"] == 48 and run["log_rows"] == 6
        assert run["images_per_s"] > 0 and 0 <= run["data_wait"] <= run["data_wait_max"] <= 1


def test_the_decode_check_proves_the_cpu_only_behaviour_and_runs_the_device_path(dry_run):
    """Without CUDA: decode=cuda is refused with its one-line error, auto gives the CPU path's batches,
    and the device path's code (worker-side boxes, decode_batch) delivers the same samples within
    the stated tolerance of the CPU loader path on a shard the builder wrote."""
    _, rows, _ = dry_run
    (decode,) = [r for r in rows if r["phase"] == "decode-check"]
    assert decode["device"] == "cpu" and decode["shard"] == "train-000000.tar" and decode["images"] == 64
    assert decode["cuda_refused"] == "loader.decode='cuda' needs a CUDA device, and none is available; use 'cpu' or 'auto'"
    assert decode["auto_falls_back_to_cpu"] and decode["same_samples"]
    assert decode["decoder_mad_max"] == 0.0  # on the CPU both sides are libjpeg-turbo with the same boxes
    assert 0 < decode["cpu_path_mad_mean"] <= decode["max_mad_allowed"] == 2.0


def test_the_summary_has_the_tables_and_claims_no_gpu_figure(dry_run):
    _, _, out = dry_run
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU check (dry run on the CPU: toy sizes, no GPU figure)")
    for heading in ("## CUDA tests: 0 passed, 0 failed,", "## Training step throughput", "## End to end",
                    "## Device decode (data.decode=cuda) on train-000000.tar, 64 images at 32 px", "## Phases"):
        assert heading in summary
    assert "| bf16_cl_eager (AMP + NHWC for the anchor) | 1,211 | - | **not measured on GPU (dry run)** |" in summary
    assert "| fp32_eager (TF32 for the anchor) | 456 | - | **not measured on GPU (dry run)** |" in summary

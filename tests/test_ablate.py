"""scripts/ablate.py end to end at a tiny size: the shared inputs, every cell (pretraining -> linear
probe), the table / json / plot with the right cells and statistics, and resumability (a rerun
reuses every finished cell and input; deleting one result.json reruns exactly that cell). A tiny run
cannot show which configuration is better, only that each is run, measured and reported truthfully;
the real figures are in docs/ablations.md."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--world-images", "400", "--min-count", "3", "--seeds", "0", "1", "--pretrain-images", "256",
        "--image-size", "32", "--only", "loss", "--ranks", "1", "--jobs", "2"]
CELLS = {f"{arm}-seed{seed}" for arm in ("baseline", "sigmoid", "random-init") for seed in (0, 1)}

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ablate")]


def run_ablate(out: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "ablate.py"), "--out", str(out), *options],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def outcome(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-4000:] + result.stderr[-4000:]


def mtimes(out: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.glob(pattern))}


@pytest.fixture(scope="module")
def ablation(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("ablate") / "out"
    result = run_ablate(out, *TINY)
    assert result.returncode == 0, outcome(result)
    return out, result


def test_every_cell_ran_once_and_wrote_its_result(ablation):
    out, result = ablation
    assert "6 cells: 0 reused (finished earlier), 6 to run, 2 at a time" in result.stdout
    assert {p.parent.name for p in out.glob("cells/*/result.json")} == CELLS
    for cell in CELLS:
        assert f"start {cell}" in result.stdout and f"done {cell}: linear top-1" in result.stdout
        record = json.loads((out / "cells" / cell / "result.json").read_text())
        assert 0.0 <= record["linear"]["top1"] <= 100.0 and record["linear"]["val_images"] == 600
        pretrained = not cell.startswith("random-init")
        assert (out / "cells" / cell / "pretrain" / "trunk.safetensors").is_file() == pretrained
        if pretrained:
            assert record["pretrain"]["images_seen"] >= 256 and record["num_labels"] > 0
    sigmoid = json.loads((out / "cells" / "sigmoid-seed1" / "result.json").read_text())
    assert sigmoid["arm"]["loss"] == "sigmoid" and sigmoid["seed"] == 1
    # Each cell really ran its own configuration and seed, on one pretraining process with the
    # recipe's global batch restored by accumulation.
    config = (out / "cells" / "sigmoid-seed1" / "pretrain" / "config.yaml").read_text()
    for line in ("name: sigmoid", "seed: 1", "total_images: 256", "grad_accum: 2", "image_size: 32"):
        assert re.search(rf"^\s*{line}$", config, re.M), line
    for name in ("world-noise0", "vocab-noise0-full.json", "shards-noise0-full"):
        assert (out / "inputs" / f"{name}.done").is_file(), name


def test_table_json_and_plot_hold_the_cells_and_their_statistics(ablation):
    out, _ = ablation
    data = json.loads((out / "ablations.json").read_text())
    assert {cell["cell"] for cell in data["cells"]} == CELLS
    table = (out / "ablations.md").read_text()
    assert "linear probe top-1 (%), mean ± std" in table and "256 pretraining images" in table
    assert "python scripts/ablate.py --out" in table and "CPU cores (os.cpu_count()), no GPU" in table
    for arm, value in (("baseline", "softmax (baseline)"), ("sigmoid", "sigmoid"),
                       ("random-init", "random-init trunk (no pretraining)")):
        tops = [json.loads((out / "cells" / f"{arm}-seed{s}" / "result.json").read_text())["linear"]["top1"]
                for s in (0, 1)]
        mean, std = statistics.mean(tops), statistics.stdev(tops)  # sample std: n - 1
        assert data["summary"]["linear"][arm]["mean"] == pytest.approx(mean)
        assert data["summary"]["linear"][arm]["std"] == pytest.approx(std)
        row = f"| {value} | {mean:.1f} ± {std:.1f} | 2 | 0: {tops[0]:.1f}, 1: {tops[1]:.1f} |"
        assert row in table, (row, table)
    assert "resampling" not in table and "label noise" not in table  # --only loss
    assert (out / "ablations.png").read_bytes()[:8] == PNG


def test_rerun_reuses_finished_cells_and_deleting_a_result_reruns_only_that_cell(ablation):
    out, _ = ablation
    before = mtimes(out, "cells/*/**/*")
    again = run_ablate(out, *TINY)
    assert again.returncode == 0, outcome(again)
    assert "6 cells: 6 reused (finished earlier), 0 to run" in again.stdout
    assert "start " not in again.stdout and again.stdout.count(": reused") == 3  # world, vocab, shards
    assert mtimes(out, "cells/*/**/*") == before  # nothing in any cell was touched

    deleted = out / "cells" / "sigmoid-seed0" / "result.json"
    figure = json.loads(deleted.read_text())["linear"]["top1"]
    deleted.unlink()
    third = run_ablate(out, *TINY)
    assert third.returncode == 0, outcome(third)
    assert "6 cells: 5 reused (finished earlier), 1 to run" in third.stdout
    assert re.findall(r"start (\S+)", third.stdout) == ["sigmoid-seed0"]
    after = mtimes(out, "cells/*/**/*")
    changed = {path for path in after if after[path] != before.get(path)}
    assert changed and all(path.startswith("cells/sigmoid-seed0/") for path in changed), changed
    # Its finished stages are reused: the trunk is the same file, so the result is the same figure.
    assert "cells/sigmoid-seed0/pretrain/trunk.safetensors" not in changed
    assert "cells/sigmoid-seed0/result.json" in changed
    assert json.loads(deleted.read_text())["linear"]["top1"] == figure


def test_a_cell_whose_pretraining_is_gone_pretrains_again_under_torchrun(ablation):
    out, _ = ablation
    cell = out / "cells" / "baseline-seed1"
    shutil.rmtree(cell / "pretrain")
    (cell / "result.json").unlink()
    options = [*TINY]
    options[options.index("--ranks") + 1], options[options.index("--jobs") + 1] = "2", "1"  # the default layout
    result = run_ablate(out, *options)
    assert result.returncode == 0, outcome(result)
    assert re.findall(r"start (\S+)", result.stdout) == ["baseline-seed1"]
    assert "--nproc_per_node=2 -m pretrain" in (cell / "log.txt").read_text()
    config = (cell / "pretrain" / "config.yaml").read_text()
    assert re.search(r"^\s*grad_accum: 1$", config, re.M)  # two ranks x 64: the recipe's global batch as is
    assert json.loads((cell / "result.json").read_text())["pretrain"]["images_seen"] >= 256
    # The probe of the earlier trunk was not reused: the new result is the new trunk's probe.
    probe = json.loads((cell / "linear" / "linear.json").read_text())
    trunk = hashlib.sha256((cell / "pretrain" / "trunk.safetensors").read_bytes()).hexdigest()
    assert probe["init"]["weights_sha256"] == trunk


def test_other_settings_into_the_same_out_are_refused_with_one_line(ablation):
    out, _ = ablation
    options = [*TINY]
    options[options.index("--pretrain-images") + 1] = "300"
    result = run_ablate(out, *options)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "pretrain_images" in result.stderr and "another --out" in result.stderr


def test_unknown_factor_is_one_error_line(tmp_path):
    result = run_ablate(tmp_path / "out", "--only", "q,lr")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: --only 'q,lr': unknown factor lr; use a comma-separated subset of q,loss,noise,vocab")
    assert not (tmp_path / "out").exists()

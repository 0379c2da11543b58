"""scripts/ablate.py end to end at a tiny size: the shared inputs, every cell (pretraining -> linear
probe), the table / json / plot with the right cells and statistics, and resumability (a rerun
reuses every finished cell and input; deleting one result.json reruns exactly that cell). A tiny run
cannot show which configuration is better, only that each is run, measured and reported truthfully;
the real figures are in docs/ablations.md."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from scipy import stats

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
    for name in ("world-demo", "vocab-demo-full.json", "shards-demo-noise0-full"):
        assert (out / "inputs" / f"{name}.done").is_file(), name


def test_table_json_and_plot_hold_the_cells_and_their_statistics(ablation):
    out, _ = ablation
    data = json.loads((out / "ablations.json").read_text())
    assert {cell["cell"] for cell in data["cells"]} == CELLS
    table = (out / "ablations.md").read_text()
    assert "linear probe top-1 (%), mean ± 95 % CI" in table and "256 pretraining images" in table
    assert "python scripts/ablate.py --out" in table and "CPU cores (os.cpu_count()), no GPU" in table
    for arm, value in (("baseline", "softmax (baseline)"), ("sigmoid", "sigmoid"),
                       ("random-init", "random-init trunk, demo world")):
        tops = [json.loads((out / "cells" / f"{arm}-seed{s}" / "result.json").read_text())["linear"]["top1"]
                for s in (0, 1)]
        mean, std = statistics.mean(tops), statistics.stdev(tops)  # sample std: n - 1
        half = stats.t.ppf(0.975, len(tops) - 1) * stats.sem(tops)  # t.interval is nan for equal seeds
        low, high = mean - half, mean + half
        assert data["summary"]["linear"][arm]["mean"] == pytest.approx(mean)
        assert data["summary"]["linear"][arm]["std"] == pytest.approx(std)
        assert data["summary"]["linear"][arm]["ci95"] == pytest.approx((high - low) / 2)
        row = f" | {mean:.1f} ± {(high - low) / 2:.1f} | 2 | 0: {tops[0]:.1f}, 1: {tops[1]:.1f} |"
        assert f"| {value} |" in table and row in table, (row, table)
    assert "resampling" not in table and "| label noise" not in table  # --only loss
    assert (out / "ablations.png").read_bytes()[:8] == PNG


def test_the_claims_get_a_seed_paired_verdict_and_the_hashtag_metrics_their_constant_guesses(ablation):
    """Softmax vs sigmoid: the difference of the seed-paired top-1s with its 95 % t interval (scipy as
    the oracle) and the verdict the interval implies; precision@1 beside the constant guess read from
    the val shards by hand."""
    out, _ = ablation
    data = json.loads((out / "ablations.json").read_text())
    top = {(c["arm"]["name"], c["seed"]): c["linear"]["top1"] for c in data["cells"]}
    differences = [top["baseline", s] - top["sigmoid", s] for s in (0, 1)]
    mean = statistics.mean(differences)
    half = stats.t.ppf(0.975, 1) * stats.sem(differences)
    low, high = mean - half, mean + half
    [claim] = data["verdicts"]["linear"]
    assert claim["better"] == "baseline" and claim["worse"] == "sigmoid" and claim["paired_seeds"] == [0, 1]
    assert claim["difference"] == pytest.approx(mean) and claim["ci95"] == pytest.approx([low, high])
    assert claim["verdict"] == ("holds" if low > 0 else "reversed" if high < 0 else "not resolved at this scale")
    table = (out / "ablations.md").read_text()
    line = f"| softmax beats the per-hashtag sigmoid | **{claim['verdict']}** | baseline − sigmoid: {mean:+.1f}"
    assert line in table
    labels = []
    for tar in (out / "inputs" / "shards-demo-noise0-full").glob("val-*.tar"):
        with tarfile.open(tar) as archive:
            labels += [json.load(archive.extractfile(m))["labels"] for m in archive if m.name.endswith(".json")]
    labelled = [set(x) for x in labels if x]
    most = Counter(label for x in labelled for label in x).most_common(1)[0][1]
    baselines = data["hashtag_baselines"]["shards-demo-noise0-full"]
    assert baselines["precision_at_1"] == pytest.approx(most / len(labelled))
    assert f"| {baselines['precision_at_1']:.3f} |" in table


def test_each_cell_records_when_it_ran_and_the_table_says_which_parts_ran_when(ablation):
    out, _ = ablation
    table = (out / "ablations.md").read_text()
    for cell in CELLS:
        ran = json.loads((out / "cells" / cell / "result.json").read_text())["ran"]
        assert ran["started"] <= ran["finished"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ran["finished"])
    days = {json.loads((out / "cells" / c / "result.json").read_text())["ran"]["finished"][:10] for c in CELLS}
    for day in days:
        assert re.search(rf"^- {day}: \d+ cell\(s\): ", table, re.M), table


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
        "error: --only 'q,lr': unknown factor lr; use a comma-separated subset of q,loss,noise,vocab,longtail")
    assert not (tmp_path / "out").exists()


def load_ablate():
    spec = importlib.util.spec_from_file_location("ablate", REPO / "scripts" / "ablate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ablate", module)  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return sys.modules["ablate"]


def test_the_sampling_rows_include_natural_and_say_what_they_mean_and_sigmoid_keeps_the_recipe_init(tmp_path):
    """The natural cell streams the shards with no resampler (data.sampling.q=null), q = 1 is a
    different row, and every sampling row says in words what it does with multi-label images; the
    sigmoid cell overrides only loss.name (the head init stays the recipe's)."""
    ablate = load_ablate()
    for key in ("q", "longtail"):
        factor = next(f for f in ablate.FACTORS if f.key == key)
        assert [level.arm.q for level in factor.levels] == [None, 1.0, 0.5, 0.0]
        natural, q1 = factor.levels[0], factor.levels[1]
        assert "once per pass" in natural.meaning and "label" in q1.meaning and "weighted" in q1.meaning
    args = ablate.parse_args(["--out", str(tmp_path)])
    settings = ablate.Settings(1, 1, 256, None, 1, 1, 1, False, {})
    recipe = ablate.config_from_dict(ablate.resolved_recipes()["pretrain"])
    ab = ablate.Ablation(ablate.Layout(tmp_path), args, settings, recipe, 1, 2, ablate.Processes())
    natural = ablate.pretrain_command(ablate.Cell(next(a for a in ablate.arms_of(ablate.FACTORS)
                                                       if a.name == "natural"), 0), ab)
    assert "data.sampling.q=null" in natural
    sigmoid = ablate.pretrain_command(ablate.Cell(ablate.Arm("sigmoid", loss="sigmoid"), 0), ab)
    assert [option for option in sigmoid if option.startswith("loss.")] == ["loss.name=sigmoid"]
    assert args.seeds == [0, 1, 2, 3, 4]


def test_every_table_row_has_the_header_columns():
    """A "|" inside a cell's text (a formula such as w(I) = |I|) would split its row into extra
    columns and shift every figure after it: every row of the downstream table has the header's
    column count."""
    ablate = load_ablate()
    settings = ablate.Settings(1, 1, 256, None, 1, 1, 1, False, {})
    lines = ablate.table_lines(ablate.FACTORS, [], "linear", settings)
    header = len(re.split(r"(?<!\\)\|", lines[0]))
    assert len(lines) > 2 + len(ablate.FACTORS)
    for line in lines:
        assert len(re.split(r"(?<!\\)\|", line)) == header, line


def test_the_default_run_states_its_cost():
    """--help states the default run's cell count and time from the measured minutes per cell."""
    ablate = load_ablate()
    cells = [ablate.Cell(arm, seed) for seed in range(5) for arm in ablate.arms_of(ablate.FACTORS)]
    assert len(cells) == 70
    minutes = ablate.estimate_minutes(cells, 60_000)
    assert minutes == pytest.approx(60 * 1.6 + 10 * 0.1)
    help_text = run_ablate(REPO / "runs" / "unused", "--help").stdout
    assert "70 cells" in help_text and "about 1 h 40 min" in help_text

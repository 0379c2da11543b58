"""The shard builder end to end: real JPEG files and tables made here, real tars read back with
webdataset and tar, determinism across worker counts, resume after kill -9, node split."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data.corpus import open_corpus
from data.corpus.record import CorpusReader, RecordBatch
from data.errors import UserError
from data.images.sources import url_md5
from data.images.decode import ImageSettings
from data.shards.build import BuildConfig, build_shards, finalize
from data.shards.scan import tar_safe_key
from data.shards.tar_writer import write_tar
from data.vocab.vocabulary import Label, Vocabulary
from tests.shard_corpus import REPO, WORDS, builder_command, corpus_arguments, make_corpus, make_parquet_corpus, node_command
from tests.shard_factory import built_files, img2dataset_members, photo_like



def build(root: Path, out: str = "shards", **options) -> tuple[BuildConfig, object]:
    settings = {"shard_size": 4, "val_fraction": 0.25, "workers": 1, **options}
    config = BuildConfig(root / out, root / "vocab.json", str(root), **settings)
    return config, build_shards(open_corpus("jsonl", root / "table.jsonl"), config)


def read_webdataset(out: Path, split: str, info: dict) -> list[dict]:
    urls = [str(out / shard["name"]) for shard in info["shards"][split]]
    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.single_node_only,
                             workersplitter=None)
    return list(dataset)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rows = make_corpus(root)
    config, result = build(root)
    return root, config.out, rows, result


def test_shards_read_back_with_webdataset(built):
    _, out, rows, result = built
    info = json.loads((out / "info.json").read_text())
    assert result.info == info
    vocab = Vocabulary.load(out.parent / "vocab.json")
    recount = [0] * len(WORDS)
    for split in ("train", "val"):
        samples = read_webdataset(out, split, info)
        assert len(samples) == info["num_samples"][split]
        assert [s["samples"] for s in info["shards"][split]] == [
            sum(1 for m in tarfile.open(out / s["name"]).getnames() if m.endswith(".json"))
            for s in info["shards"][split]]
        for sample in samples:
            meta = json.loads(sample["json"])
            assert meta["key"] == sample["__key__"]
            assert meta["tags"] == rows[meta["source_key"]]["tags"]
            assert meta["labels"] == vocab.label_ids(meta["tags"]) and meta["labels"]
            with Image.open(io.BytesIO(sample["jpg"])) as image:
                assert image.format == "JPEG" and image.mode == "RGB"
                assert image.size == (meta["width"], meta["height"]) == (80, 60)
            if split == "train":
                for label in meta["labels"]:
                    recount[label] += 1
    assert info["label_counts"] == recount
    assert info["num_samples"]["total"] == info["num_samples"]["train"] + info["num_samples"]["val"] == 31
    assert info["vocab"]["sha256"] == hashlib.sha256((out.parent / "vocab.json").read_bytes()).hexdigest()
    assert info["vocab"]["tags"] == WORDS
    for shard in info["shards"]["train"] + info["shards"]["val"]:
        assert hashlib.sha256((out / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]


def test_shards_list_with_tar(built):
    _, out, _, _ = built
    info = json.loads((out / "info.json").read_text())
    listed = []
    for shard in info["shards"]["train"] + info["shards"]["val"]:
        done = subprocess.run(["tar", "tf", str(out / shard["name"])], capture_output=True, text=True,
                              check=True)
        names = done.stdout.split()
        assert len(names) == 2 * shard["samples"]
        listed += names
    stems = [name.rsplit(".", 1)[0] for name in listed]
    assert all("/" not in s and "." not in s for s in stems)
    assert Counter(name.rsplit(".", 1)[1] for name in listed) == {"jpg": 31, "json": 31}
    assert tar_safe_key("users/42/photo.v2") in stems


def test_every_skip_is_counted_by_reason(built):
    _, out, _, _ = built
    report = json.loads((out / "report.json").read_text())
    expected = {"no_label": ["nolabel1", "nolabel2"], "missing_image": ["gone"],
                "duplicate": ["copy-of-p3"], "truncated": ["cut"], "too_many_pixels": ["bomb"]}
    assert report["skipped"]["counts"] == {k: len(v) for k, v in sorted(expected.items())}
    assert report["skipped"]["examples"] == expected
    assert report["records_read"] == 37
    info = json.loads((out / "info.json").read_text())
    assert info["skipped"]["counts"] == report["skipped"]["counts"]
    assert (out / "label_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_bytes_whatever_the_worker_count(built, tmp_path):
    root, out, _, _ = built
    build(root, out=str(tmp_path / "two-workers"), workers=2)
    assert built_files(tmp_path / "two-workers") == built_files(out)


def test_resume_keeps_complete_shards_and_rebuilds_damaged_ones(tmp_path):
    make_corpus(tmp_path)
    config, fresh = build(tmp_path)
    reference = built_files(config.out)
    (config.out / "train-000001.tar").write_bytes(b"half a shard")  # tar without a matching manifest
    (config.out / ".build" / "train-000002.json").unlink()  # a shard whose manifest never landed
    (config.out / "info.json").unlink()
    # Temp files that kill -9 leaves mid-write (data.atomic_write names them .<name>.<random>.tmp).
    stale = [config.out / ".train-000001.tar.k1ll3d.tmp", config.out / ".build" / ".train-000002.json.x.tmp",
             config.out / ".info.json.old.tmp"]
    for temp in stale:
        temp.write_bytes(b"partial")
    os.utime(stale[-1], (time.time() - 3600, time.time() - 3600))
    _, again = build(tmp_path)
    assert again.built == 2 and again.kept == fresh.built - 2
    assert built_files(config.out) == reference


def test_changed_settings_rebuild_every_shard(tmp_path):
    make_corpus(tmp_path)
    build(tmp_path)
    _, changed = build(tmp_path, image=ImageSettings(quality=60))
    assert changed.kept == 0
    build(tmp_path, out="fresh", image=ImageSettings(quality=60))
    assert built_files(tmp_path / "shards") == built_files(tmp_path / "fresh")


def test_node_split_then_finalize_equals_one_full_run(tmp_path):
    make_corpus(tmp_path)
    build(tmp_path, out="full")
    _, first = build(tmp_path, out="split", num_nodes=2, node_rank=0)
    assert not first.finalized and first.built > 0 and first.other_nodes > 0
    assert not (tmp_path / "split" / "info.json").exists()
    with pytest.raises(UserError, match="not built yet"):
        finalize(tmp_path / "split")
    _, second = build(tmp_path, out="split", num_nodes=2, node_rank=1)
    assert second.finalized and second.built == first.other_nodes
    finalize(tmp_path / "split")  # an explicit --finalize afterwards changes nothing
    assert built_files(tmp_path / "split") == built_files(tmp_path / "full")


def test_a_node_of_several_says_when_its_input_is_compressed(tmp_path, capsys):
    # Every node decompresses a compressed input whole to find its rows: the user is told once.
    make_corpus(tmp_path)
    (tmp_path / "table.jsonl.gz").write_bytes(gzip.compress((tmp_path / "table.jsonl").read_bytes()))
    config = BuildConfig(tmp_path / "out", tmp_path / "vocab.json", str(tmp_path), shard_size=4, num_nodes=2)
    build_shards(open_corpus("jsonl", tmp_path / "table.jsonl.gz"), config)
    assert capsys.readouterr().err.count("is compressed: every node decompresses all of it") == 1
    build_shards(open_corpus("jsonl", tmp_path / "table.jsonl"), config)
    assert "compressed" not in capsys.readouterr().err


def test_one_node_with_two_workers_and_three_nodes_with_one_give_the_same_bytes(tmp_path):
    make_parquet_corpus(tmp_path)
    subprocess.run(node_command(tmp_path, tmp_path / "one", 0, 1, 2), check=True, capture_output=True)
    # Three nodes started together, meeting through the files of their shared --out.
    nodes = [subprocess.Popen(node_command(tmp_path, tmp_path / "three", rank, 3, 1), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(3)]
    for node in nodes:
        out, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-2000:]
    assert built_files(tmp_path / "three") == built_files(tmp_path / "one")
    info = json.loads((tmp_path / "three" / "info.json").read_text())
    # Every chunk (a row group of 4 rows, 10 in all) was scanned by exactly one node, chunk i by node i % 3.
    reports = [json.loads((tmp_path / "three" / ".build" / f"node-{r}.json").read_text()) for r in range(3)]
    assert [r["scanned"]["chunks"] for r in reports] == [4, 3, 3]
    assert sum(r["scanned"]["records"] for r in reports) == info["records_read"] == 37
    assert sum(r["built"] for r in reports) == len(info["shards"]["train"]) + len(info["shards"]["val"])
    assert any(r["finalized"] for r in reports)
    # p3 (chunk 0, node 0) and its byte-identical copy (chunk 8, node 2): the copy is the one dropped.
    report = json.loads((tmp_path / "three" / "report.json").read_text())
    assert report["skipped"]["examples"]["duplicate"] == ["copy-of-p3"]


def test_finalize_writes_info_json_when_the_last_node_died_before_it(tmp_path):
    make_parquet_corpus(tmp_path)
    nodes = [subprocess.Popen(node_command(tmp_path, tmp_path / "out", rank, 2, 1), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for rank in range(2)]
    assert [node.wait(timeout=300) for node in nodes] == [0, 0]
    reference = built_files(tmp_path / "out")
    for name in ("info.json", "report.json", "label_histogram.png"):  # as if the last node died first
        (tmp_path / "out" / name).unlink()
    done = subprocess.run(builder_command("--out", str(tmp_path / "out"), "--finalize", "--no-progress"),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "train shard(s)" in done.stdout and built_files(tmp_path / "out") == reference


def test_slurm_script_runs_one_builder_per_task_and_they_give_the_bytes_of_one_node(tmp_path):
    make_parquet_corpus(tmp_path)
    script = REPO / "scripts" / "slurm" / "build_shards.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    # SLURM's srun stands in as a stub that starts its command once per task, each with its
    # SLURM_PROCID, concurrently, as on SLURM_NTASKS nodes; it records its own options.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        "#!/bin/bash\n"
        f'echo "$@" > {tmp_path}/srun.args\n'
        'while [[ "$1" == --* ]]; do shift; done\n'
        'pids=(); for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@" & pids+=($!); done\n'
        'rc=0; for p in "${pids[@]}"; do wait "$p" || rc=$?; done; exit $rc\n')
    (bin_dir / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NTASKS": "3", "SLURM_CPUS_PER_TASK": "1",
           "PYTHON": sys.executable, "BUILDER": str(REPO / "scripts" / "build_shards.py")}
    done = subprocess.run(["bash", str(script), *corpus_arguments(tmp_path, tmp_path / "slurm")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--kill-on-bad-exit=1" in (tmp_path / "srun.args").read_text()
    subprocess.run(node_command(tmp_path, tmp_path / "one", 0, 1, 1), check=True, capture_output=True)
    assert built_files(tmp_path / "slurm") == built_files(tmp_path / "one")
    reports = [json.loads((tmp_path / "slurm" / ".build" / f"node-{r}.json").read_text()) for r in range(3)]
    assert [(r["node_rank"], r["num_nodes"], r["workers"]) for r in reports] == [(0, 3, 1), (1, 3, 1), (2, 3, 1)]
    usage = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: sbatch" in usage.stderr


def test_resume_after_kill_is_byte_identical(tmp_path):
    make_corpus(tmp_path, good=60, size=(400, 300))
    common = ["--source", "jsonl", "--input", str(tmp_path / "table.jsonl"), "--images", str(tmp_path),
              "--vocab", str(tmp_path / "vocab.json"), "--shard-size", "2", "--val-fraction", "0.2",
              "--workers", "1", "--no-progress"]
    subprocess.run(builder_command(*common, "--out", str(tmp_path / "whole")), check=True, capture_output=True)
    out = tmp_path / "killed"
    process = subprocess.Popen(builder_command(*common, "--out", str(out)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / ".build" / "train-000000.json").exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "info.json").exists(), "the build finished before it could be killed"
    assert len(list(out.glob("*.tar"))) < len(list((tmp_path / "whole").glob("*.tar")))
    done = subprocess.run(builder_command(*common, "--out", str(out)), check=True, capture_output=True, text=True)
    assert "train shard(s)" in done.stdout
    assert built_files(out) == built_files(tmp_path / "whole")


@pytest.mark.parametrize("change, message", [
    (("--vocab", "missing.json"), "vocabulary missing.json not found"),
    (("--images", "no-such-dir"), "--images no-such-dir: not found"),
    (("--input", "no-such.jsonl"), "no-such.jsonl not found"),
    (("--node-rank", "2", "--num-nodes", "2"), "--node-rank must be in"),
    (("--quality", "0"), "JPEG quality"),
])
def test_bad_arguments_fail_with_one_line(tmp_path, change, message):
    make_corpus(tmp_path, good=5)
    args = {"--source": "jsonl", "--input": str(tmp_path / "table.jsonl"), "--images": str(tmp_path),
            "--vocab": str(tmp_path / "vocab.json"), "--out": str(tmp_path / "out")}
    extra = []
    for flag, value in zip(change[::2], change[1::2]):
        if flag in args:
            args[flag] = value
        else:
            extra += [flag, value]
    argv = [part for pair in args.items() for part in pair] + extra
    done = subprocess.run(builder_command(*argv, "--no-progress"), capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr


# --- where images come from ------------------------------------------------------------------------

def test_img2dataset_shards_are_read_in_place(tmp_path):
    rng = np.random.default_rng(1)
    members = img2dataset_members(6, rng, tags=lambda i: "cat,dog" if i % 2 else "bird")
    # A hostile member name is only ever a key: nothing is written outside the output folder.
    members.append(("../escape.jpg", photo_like(rng, 64, 48)))
    write_tar(tmp_path / "00000.tar", members)
    Vocabulary([Label(i, w, 1) for i, w in enumerate(WORDS)]).save(tmp_path / "vocab.json")
    config = BuildConfig(tmp_path / "out", tmp_path / "vocab.json", None, shard_size=4, val_fraction=0.0)
    result = build_shards(open_corpus("img2dataset", tmp_path / "00000.tar"), config)
    assert result.info["num_samples"]["train"] == 6
    assert not (tmp_path / "escape.jpg").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".tar") == [
        "train-000000.tar", "train-000001.tar"]


class _ListReader(CorpusReader):
    """Records given in memory (bytes images), for the builder's inline-image path."""

    source = "list"

    def __init__(self, rows: list[tuple[str, list[str], bytes]]) -> None:
        self.rows = rows

    def chunks(self):
        return [0]

    def read_chunk(self, chunk, tags_only=False):
        import pyarrow as pa
        return RecordBatch(pa.array([r[0] for r in self.rows]),
                           pa.array([r[1] for r in self.rows], pa.list_(pa.string())),
                           images=[r[2] for r in self.rows])


def test_records_carrying_their_bytes(tmp_path):
    rng = np.random.default_rng(2)
    rows = [(f"b{i}", ["dog"], photo_like(rng, 50, 40)) for i in range(5)] + [("junk", ["dog"], b"junk")]
    Vocabulary([Label(0, "dog", 5)]).save(tmp_path / "vocab.json")
    result = build_shards(_ListReader(rows), BuildConfig(tmp_path / "out", tmp_path / "vocab.json",
                                                         val_fraction=0.0))
    assert result.info["num_samples"]["train"] == 5
    assert result.info["skipped"]["counts"] == {"unsupported_format": 1}
    assert result.info["label_counts"] == [5]


@pytest.mark.parametrize("layout", ["mirror", "flat"])
def test_real_yfcc_rows_join_the_real_photo(shared_data, tmp_path, layout):
    sample = shared_data / "yfcc100m_sample"
    photo = (sample / "588715640_40971fc6fa.jpg").read_bytes()
    url = "http://farm2.staticflickr.com/1373/588715640_40971fc6fa.jpg"  # row 910's download url
    if layout == "mirror":
        digest = url_md5(url)
        target = tmp_path / "images" / "data" / "images" / digest[:3] / digest[3:6] / f"{digest}.jpg"
    else:
        target = tmp_path / "images" / "588715640_40971fc6fa.jpg"
    target.parent.mkdir(parents=True)
    target.write_bytes(photo)
    Vocabulary([Label(0, "london", 16), Label(1, "tate", 2)]).save(tmp_path / "vocab.json")
    reader = open_corpus("yfcc100m", sample / "yfcc100m_dataset_25col_head2000.tsv")
    config = BuildConfig(tmp_path / "out", tmp_path / "vocab.json", str(tmp_path / "images"), val_fraction=0.0)
    info = build_shards(reader, config).info
    assert info["images"]["layout"] == ("yfcc100m-mirror" if layout == "mirror" else "flat-directory")
    assert info["num_samples"]["train"] == 1 and info["label_counts"] == [1, 1]
    report = json.loads((config.out / "report.json").read_text())
    # Rows tagged london or tate whose photos are not in the folder: counted, not fatal.
    assert set(report["skipped"]["counts"]) == {"no_label", "missing_image"}
    assert report["skipped"]["counts"]["missing_image"] >= 1
    (sample_bytes,) = [s for s in read_webdataset(config.out, "train", info)]
    meta = json.loads(sample_bytes["json"])
    assert meta["source_key"] == meta["key"] == "588715640"
    assert meta["tags"] == ["britain", "flickr", "london", "meetup", "tate"] and meta["labels"] == [0, 1]
    assert meta["download_url"] == url and meta["license_name"]
    assert report["records_read"] == sum(report["skipped"]["counts"].values()) + 1

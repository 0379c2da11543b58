"""The img2dataset reader on a real img2dataset-style folder written by the test (tarfile, PIL JPEGs,
JSON and Parquet sidecars), including a corrupt JSON, a missing image, a failed download and a
truncated tar."""
from __future__ import annotations

import io
import json
import pickle
import tarfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data.corpus.img2dataset import Img2DatasetReader, ShardChunk, expand_inputs
from data.corpus.record import MalformedReport
from data.errors import UserError
from data.tar_member import TarMember


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16 + seed, 12), (seed * 40 % 256, 80, 160)).save(out, "JPEG", quality=90)
    return out.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def sample_json(key: str, **extra) -> bytes:
    row = {"key": key, "url": f"https://example.org/{key}.jpg", "status": "success", "width": 16,
           "height": 12, "exif": json.dumps({"Image Make": "x" * 500}), "caption": f"photo {key}"}
    row.update(extra)
    return json.dumps(row).encode()


# (key, members written to the tar, the sidecar's tags)
SHARD0 = [
    ("000000000", {"jpg": 0, "json": {"tags": ["Brown Bear", "forest"]}, "txt": "photo"}, ["Brown Bear", "forest"]),
    ("000000001", {"png": 1, "json": {"tags": "lake,Swan,,"}}, ["lake", "Swan"]),
    ("000000002", {"jpg": 2, "json": b"{not json"}, ["x"]),                       # corrupt json
    ("000000003", {"json": {"tags": ["lost"]}}, ["lost"]),                         # no image
    ("000000004", {"jpg": 4, "json": {"caption": "no tags here"}}, None),          # no tags field
    ("000000005", {"jpg": 5, "json": {"tags": None}}, None),                       # null: no tags
    ("000000006", {"jpg": 6, "json": {"tags": 17}}, None),                         # wrong type
    ("000000007", {"jpg": 7}, None),                                               # no JSON
]


def write_shard0(folder: Path) -> None:
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for key, members, _ in SHARD0:
            for ext, value in members.items():
                if ext in ("jpg", "png"):
                    data = jpeg(value)
                elif ext == "json":
                    data = value if isinstance(value, bytes) else sample_json(key, **value)
                else:
                    data = value.encode()
                add(tar, f"{key}.{ext}", data)
    rows = [(key, "success", tags, None) for key, _, tags in SHARD0]
    # a row img2dataset could not download: in the sidecar, not in the tar
    rows.insert(3, ("000000099", "failed_to_download", ["ghost"], "HTTP 404"))
    columns = dict(zip(["key", "status", "tags", "error_message"], map(list, zip(*rows))))
    pq.write_table(pa.table(columns), folder / "00000.parquet")
    (folder / "00000_stats.json").write_text(json.dumps({"count": 8, "successes": 7}))


def write_truncated_shard1(folder: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i in range(3):
            key = f"000010{i:03d}"
            add(tar, f"{key}.jpg", jpeg(10 + i) + b"\0" * 4000)
            add(tar, f"{key}.json", sample_json(key, tags=[f"tag{i}"]))
    raw = buffer.getvalue()
    # cut inside the second sample's image: the first sample survives
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        second_image = tar.getmember("000010001.jpg")
    (folder / "00001.tar").write_bytes(raw[: second_image.offset_data + 100])


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    folder = tmp_path / "shards"
    folder.mkdir()
    write_shard0(folder)
    write_truncated_shard1(folder)
    return folder


def reasons(report: MalformedReport) -> Counter:
    return Counter({reason.rsplit(" (", 1)[0]: n for reason, n in report.counts.items()})


def test_records_tags_images_and_metadata(shards: Path):
    reader = Img2DatasetReader(shards)
    records = list(reader.records())
    assert [r.key for r in records] == ["000000000", "000000001", "000000005", "000010000"]
    assert [r.tags for r in records] == [["Brown Bear", "forest"], ["lake", "Swan"], [], ["tag0"]]
    first = records[0]
    assert (first.image.tar, first.image.member) == (str(shards / "00000.tar"), "000000000.jpg")
    assert isinstance(records[1].image, TarMember) and records[1].image.member == "000000001.png"
    with tarfile.open(first.image.tar) as tar:
        data = tar.extractfile(first.image.member).read()
    assert data == jpeg(0) and first.image.read() == data
    assert Image.open(io.BytesIO(data)).size == (16, 12)
    assert first.meta["caption"] == "photo 000000000" and first.meta["url"].endswith("000000000.jpg")
    assert "exif" not in first.meta and "tags" not in first.meta


def test_malformed_samples_are_counted_by_reason_with_member_index(shards: Path):
    reader = Img2DatasetReader(shards)
    report = MalformedReport()
    for chunk in reader.chunks():
        report.extend(reader.read_chunk(chunk).malformed)
    assert reasons(report) == Counter({"invalid JSON": 1, "no image": 1, "no tags field": 1, "no JSON": 1,
                                       "tags are not a list of strings or a delimited string": 1,
                                       "status 'failed_to_download'": 1, "truncated or corrupt tar": 1})
    assert report.examples["invalid JSON (00000.tar)"] == [5]          # 000000002.jpg is member 5
    assert report.examples["status 'failed_to_download' (00000.parquet)"] == [3]
    assert report.examples["truncated or corrupt tar (00001.tar)"] == [2]


def test_tags_only_reads_the_sidecar_and_agrees_with_the_tar(shards: Path):
    reader = Img2DatasetReader(shards)
    chunk = next(reader.chunks())
    assert chunk.sidecar == str(shards / "00000.parquet")
    (shards / "00000.tar").rename(shards / "moved.tar")      # the sidecar path must not open the tar
    fast = reader.read_chunk(chunk, tags_only=True)
    (shards / "moved.tar").rename(shards / "00000.tar")
    full = reader.read_chunk(chunk)
    fast_rows = dict(zip(fast.keys.to_pylist(), fast.tags.to_pylist()))
    full_rows = dict(zip(full.keys.to_pylist(), full.tags.to_pylist()))
    # the sidecar trusts img2dataset: it cannot see the tar's corrupt JSON or missing image
    assert {k: fast_rows[k] for k in full_rows} == full_rows
    assert "000000099" not in fast_rows
    assert fast.meta is None and fast.images is None
    assert ("status 'failed_to_download' (00000.parquet)" in {r for _, r in fast.malformed})


def test_tags_only_without_sidecar_reads_the_tar(shards: Path):
    reader = Img2DatasetReader(shards / "00001.tar")
    batch = reader.read_chunk(ShardChunk(str(shards / "00001.tar"), None), tags_only=True)
    assert batch.keys.to_pylist() == ["000010000"] and batch.tags.to_pylist() == [["tag0"]]
    assert batch.images is None and batch.meta is None


def test_inputs_folder_tar_and_patterns(shards: Path):
    both = [shards / "00000.tar", shards / "00001.tar"]
    assert expand_inputs(shards) == both
    assert expand_inputs(shards / "00001.tar") == [shards / "00001.tar"]
    assert expand_inputs(f"{shards}/{{00000..00001}}.tar") == both
    assert expand_inputs(f"{shards}/*.tar") == both
    single = Img2DatasetReader(shards / "00000.tar")
    assert [c.sidecar for c in single.chunks()] == [str(shards / "00000.parquet")]


def test_picklable_and_readable_in_another_process(shards: Path):
    reader = pickle.loads(pickle.dumps(Img2DatasetReader(shards)))
    chunks = list(reader.chunks())
    with ProcessPoolExecutor(max_workers=1) as pool:
        batches = list(pool.map(reader.read_chunk, chunks))
    assert sum(len(b) for b in batches) == 4
    assert batches[0].keys.to_pylist() == reader.read_chunk(chunks[0]).keys.to_pylist()


def test_unsafe_member_names_are_keys_only(tmp_path: Path):
    tar_path = tmp_path / "in" / "00000.tar"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w") as tar:
        add(tar, "../escape.jpg", jpeg(1))
        add(tar, "../escape.json", sample_json("x", tags=["a"]))
        add(tar, "/abs/photo.jpg", jpeg(2))
        add(tar, "/abs/photo.json", sample_json("y", tags=["b"]))
    records = list(Img2DatasetReader(tar_path).records())
    assert [r.key for r in records] == ["../escape", "/abs/photo"]
    assert (records[0].image.tar, records[0].image.member) == (str(tar_path), "../escape.jpg")
    assert records[0].image.read() == jpeg(1)
    assert not (tmp_path / "escape.jpg").exists() and not Path("/abs/photo.jpg").exists()


def test_bad_arguments_give_one_clear_line(shards: Path, tmp_path: Path):
    with pytest.raises(UserError, match="no img2dataset tars at .*nowhere"):
        Img2DatasetReader(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"00000.parquet has no tags field 'tag'.*did you mean 'tags'"):
        Img2DatasetReader(shards, tags_field="tag")
    with pytest.raises(UserError, match=r"00001.tar has no tags field 'labels'"):
        Img2DatasetReader(shards / "00001.tar", tags_field="labels")


def test_unreadable_sidecar_falls_back_to_the_tar(shards: Path):
    (shards / "00002.tar").write_bytes((shards / "00000.tar").read_bytes())
    (shards / "00002.parquet").write_bytes(b"PAR1 this is not parquet")
    reader = Img2DatasetReader(shards)
    chunk = list(reader.chunks())[2]
    batch = reader.read_chunk(chunk, tags_only=True)
    assert batch.keys.to_pylist() == ["000000000", "000000001", "000000005"]
    assert (0, "unreadable Parquet sidecar (read the tar instead) (00002.parquet)") in batch.malformed
    (shards / "00000.parquet").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read img2dataset sidecar .*00000.parquet"):
        Img2DatasetReader(shards)

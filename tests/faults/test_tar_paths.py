"""Tar members named ``../x``, ``/absolute/path`` or ``a/../../x``, and symbolic or hard links to files
elsewhere, are never written outside the output, and a link is never followed.

Every reader of tars is run on such tars from a working directory inside the test's folder, so
that ``../`` and the absolute names point at places a careless extraction would write to: the
img2dataset corpus (build_vocab and build_shards, which also read the images in place), the
training loader, the near-duplicate index (``--exclude-near``) and transfer's labelled shards.
Afterwards no file exists that was not there before, outside the outputs; the shards we write
carry only plain member names, so ``tar x`` of them is safe too; and the linked file's picture
appears nowhere.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from data.errors import UserError
from data.loader.pipeline import LoaderConfig, create_loader
from data.images.near_duplicates import build_eval_index
from data.loader.transforms import EvalTransform
from tests.faults.child_process import REPO
from tests.shard_factory import photo_like
from transfer.datasets import open_dataset

SAFE_MEMBER = re.compile(r"^[A-Za-z0-9_-]+\.(jpg|json)$")


def _add(archive: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
         link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _hostile_stems(outside: Path) -> list[str]:
    """Sample stems that try to leave the output (the last one is harmless)."""
    return ["../escape", f"{outside}/absolute", "deep/../../../climb", "plain"]


def _write_hostile_tar(tar: Path, outside: Path, secret: Path, sidecar: str, payload, links: bool = True) -> None:
    """Each hostile stem with an image and a ``sidecar`` member (``payload(stem)``), and (``links``)
    two samples whose image is a symbolic link and a hard link to ``secret``."""
    rng = np.random.default_rng(0)
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as archive:
        for stem in _hostile_stems(outside):
            _add(archive, f"{stem}.jpg", photo_like(rng, 48, 40))
            _add(archive, f"{stem}.{sidecar}", payload(stem))
        for stem, kind in (("symlinked", tarfile.SYMTYPE), ("hardlinked", tarfile.LNKTYPE)) if links else ():
            _add(archive, f"{stem}.jpg", kind=kind, link=str(secret))
            _add(archive, f"{stem}.{sidecar}", payload(stem))


@pytest.fixture
def place(tmp_path, monkeypatch) -> dict[str, Path]:
    """A working directory one level down, an 'outside' folder named by absolute members, a secret
    picture the links point at; the process runs from the working directory."""
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(photo_like(np.random.default_rng(7), 64, 48))
    monkeypatch.chdir(work)
    return {"root": tmp_path, "work": work, "outside": outside, "secret": secret}


def _files(root: Path, outputs: list[Path]) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if not any(p == out or out in p.parents for out in outputs)}


def _img2dataset_json(stem: str) -> bytes:
    return json.dumps({"tags": ["cat", "dog"], "url": f"http://example.com/{Path(stem).name}.jpg"}).encode()


def test_img2dataset_tars_with_escaping_names_stay_inside_the_output(place):
    root, work = place["root"], place["work"]
    shards = work / "img2dataset"
    shards.mkdir()
    _write_hostile_tar(shards / "00000.tar", place["outside"], place["secret"], "json", _img2dataset_json)
    vocab, out = work / "vocab.json", work / "shards"
    before = _files(root, [work])
    scripts = REPO / "scripts"
    for command in (["build_vocab.py", "--source", "img2dataset", "--input", str(shards), "--out", str(vocab),
                     "--no-progress", "--workers", "1"],
                    ["build_shards.py", "--source", "img2dataset", "--input", str(shards), "--images", str(shards),
                     "--vocab", str(vocab), "--out", str(out), "--val-fraction", "0", "--workers", "1",
                     "--no-progress"]):
        done = subprocess.run([sys.executable, str(scripts / command[0]), *command[1:]], cwd=work,
                              capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr[-3000:]
    assert _files(root, [work]) == before, "nothing appeared outside the work folder"
    assert not list(place["outside"].iterdir()) and not (root / "escape.jpg").exists()
    assert not (root / "climb.jpg").exists() and not (root.parent / "climb.jpg").exists()
    report = json.loads((work / "vocab.report.json").read_text())
    # The two linked samples have no regular image member: malformed, not followed.
    assert report["malformed"]["counts"] == {"no image (00000.tar)": 2}
    info = json.loads((out / "info.json").read_text())
    assert info["num_samples"]["total"] == 4  # the four regular samples, under safe names
    members = _members(out)
    assert len(members) == 8 and all(SAFE_MEMBER.match(name) for name in members), sorted(members)
    sources = [json.loads(data)["source_key"] for name, data in members.items() if name.endswith(".json")]
    assert sorted(sources) == sorted(_hostile_stems(place["outside"]))


def _members(shards: Path) -> dict[str, bytes]:
    """Every member of the shards we wrote, by name."""
    found = {}
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as archive:
            found.update({m.name: archive.extractfile(m).read() for m in archive.getmembers()})
    return found


def _shard_json(stem: str) -> bytes:
    return json.dumps({"labels": [1], "tags": ["t1"]}).encode()


def test_the_loader_and_the_near_duplicate_index_read_such_tars_in_memory_only(place):
    root, work = place["root"], place["work"]
    (work / "train").mkdir()
    tar = work / "train" / "train-000000.tar"
    _write_hostile_tar(tar, place["outside"], place["secret"], "json", _shard_json)
    before = _files(root, [])

    loader = create_loader([str(tar)], LoaderConfig(batch_size=2, num_workers=0, image_size=16), mode="eval")
    keys = sorted(key for batch in loader for key in batch["keys"])
    assert keys == sorted(_hostile_stems(place["outside"]))  # names are keys, links are not members
    index = build_eval_index(str(tar))
    assert len(index.names) == 4 and not any("linked" in name for name in index.names)
    assert _files(root, []) == before, "reading wrote nothing anywhere"


def _labelled_sets(place: dict[str, Path]) -> tuple[Path, Path, set[str]]:
    linked, labelled = place["work"] / "linked", place["work"] / "labelled"
    for folder, links in ((linked, True), (labelled, False)):
        folder.mkdir()
        _write_hostile_tar(folder / "val-0000.tar", place["outside"], place["secret"], "cls", lambda stem: b"1", links)
    return linked, labelled, _files(place["root"], [])


def test_transfer_refuses_a_labelled_shard_whose_image_is_a_link_and_writes_nothing(place):
    linked, labelled, before = _labelled_sets(place)
    # A labelled evaluation set with a hole would shift accuracy: a link is refused by name.
    with pytest.raises(UserError, match=r"val-0000.tar: sample 'hardlinked' has no image"):
        open_dataset(linked, kind="wds")
    dataset = open_dataset(labelled, kind="wds").with_transform(EvalTransform(size=16, resize=18))
    assert all(dataset[i][1].shape == (3, 16, 16) for i in range(len(dataset)))
    assert _files(place["root"], []) == before, "reading wrote nothing anywhere"


def test_transfer_keeps_every_sample_of_a_labelled_shard_whatever_its_member_names(place):
    _, labelled, _ = _labelled_sets(place)
    assert len(open_dataset(labelled, kind="wds")) == 4

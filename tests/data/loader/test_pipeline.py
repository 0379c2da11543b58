"""The streaming loader on real tar shards with real JPEG bytes, with real DataLoader worker processes."""
from __future__ import annotations

import io
import json
import logging
import math
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from data.corpus.table import TableReader
from data.errors import UserError
from data.loader.pipeline import LoaderConfig, create_loader
from data.shards.build import BuildConfig, build_shards
from data.loader.skips import SkipCounter
from data.vocab.vocabulary import Label, Vocabulary
from tests.shard_factory import Sample, photo_like, simple_shards, write_shard_dir

SMALL = LoaderConfig(batch_size=4, num_workers=2, image_size=24, shuffle_buffer=40, shuffle_initial=8)


def _keys(loader) -> list[str]:
    return [key for batch in loader for key in batch["keys"]]


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    return simple_shards(tmp_path_factory.mktemp("uneven") / "shards", [23, 5, 12], num_labels=4)


def test_train_batches_are_uint8_images_and_padded_labels(uneven):
    loader = create_loader(uneven, SMALL)
    # 40 images / 4 per batch = 10 batches, rounded up to a multiple of the 2 workers
    assert loader.batches_per_epoch == len(loader) == 10
    batches = list(loader)
    assert len(batches) == 10
    for batch in batches:
        assert batch["image"].shape == (4, 3, 24, 24) and batch["image"].dtype == torch.uint8
        assert batch["labels"].dtype == torch.long and batch["labels"].shape == (4, 1)
        assert len(batch["keys"]) == 4
        for key, label in zip(batch["keys"], batch["labels"][:, 0].tolist()):
            assert int(key.split("_")[1]) % 4 == label  # the sample's own label travelled with it
    assert loader.skip_counts() == {}
    assert loader.realised_label_counts().sum() == 40


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_epoch_is_sized_from_the_global_batch(uneven):
    config = LoaderConfig(**{**SMALL.__dict__, "epoch_images": 100, "num_workers": 3})
    for world_size in (1, 2, 3):
        loader = create_loader(uneven, config, rank=world_size - 1, world_size=world_size)
        expected = math.ceil(math.ceil(100 / (4 * world_size)) / 3) * 3
        assert loader.batches_per_epoch == expected
    assert len(list(create_loader(uneven, config, rank=1, world_size=3))) == 9


def test_same_seed_same_stream_other_epoch_or_seed_other_stream(uneven):
    def stream(seed: int, epoch: int) -> tuple[list[str], torch.Tensor]:
        loader = create_loader(uneven, LoaderConfig(**{**SMALL.__dict__, "seed": seed}))
        loader.set_epoch(epoch)
        batches = list(loader)
        return [k for b in batches for k in b["keys"]], torch.cat([b["image"] for b in batches])

    keys, images = stream(0, 3)
    again_keys, again_images = stream(0, 3)
    assert keys == again_keys and torch.equal(images, again_images)  # crops and flips too
    assert stream(0, 4)[0] != keys
    assert stream(1, 3)[0] != keys


def test_persistent_workers_see_set_epoch_and_a_repeated_epoch_moves_on(uneven):
    loader = create_loader(uneven, SMALL)
    loader.set_epoch(5)
    first = _keys(loader)
    second = _keys(loader)  # no set_epoch: the loader moves on to epoch 6 by itself
    assert loader.epoch == 6 and first != second
    loader.set_epoch(5)
    assert _keys(loader) == first  # the same persistent workers, back at epoch 5
    loader.set_epoch(5)
    assert _keys(loader) == first and loader.epoch == 5  # an explicit repeat is honoured


@pytest.mark.slow
def test_spawned_workers_share_the_epoch_and_the_counters(uneven):
    """Shared memory reaches workers started with spawn too (pickled at spawn time; forkserver,
    Python 3.14's default on Linux, pickles the same way). One worker: each spawn imports torch."""
    one = {**SMALL.__dict__, "num_workers": 1, "epoch_images": 16}
    loader = create_loader(uneven, LoaderConfig(**{**one, "multiprocessing_context": "spawn"}))
    loader.set_epoch(3)
    spawned = _keys(loader)
    forked = create_loader(uneven, LoaderConfig(**one))
    forked.set_epoch(3)
    assert spawned == _keys(forked) and len(spawned) == 16
    assert loader.realised_label_counts().sum() == 16


def test_skip_log_lines_are_rate_limited(caplog):
    counter = SkipCounter(slots=1, log_every_s=3600)
    with caplog.at_level(logging.WARNING, logger="openwsl.data.stream"):
        for i in range(50):
            counter.add("corrupt", f"k{i}")
            counter.add("no_label", f"k{i}")
    assert counter.counts() == {"corrupt": 50, "no_label": 50}
    assert len(caplog.records) == 2 and "k0" in caplog.records[0].getMessage()


def test_resampled_shards_draw_every_shard(uneven):
    config = LoaderConfig(**{**SMALL.__dict__, "epoch_images": 400})
    shards = Counter(key.split("_")[0] for key in _keys(create_loader(uneven, config)))
    assert set(shards) == {"s0", "s1", "s2"}


@pytest.mark.parametrize("world_size,workers", [(1, 0), (2, 2), (3, 2)])
def test_finite_mode_sees_every_sample_exactly_once(uneven, world_size, workers):
    config = LoaderConfig(batch_size=4, num_workers=workers, image_size=16, split="train")
    seen = Counter()
    for rank in range(world_size):
        loader = create_loader(uneven, config, mode="eval", rank=rank, world_size=world_size)
        batches = list(loader)
        assert len(batches) == loader.batches_per_epoch
        seen.update(key for batch in batches for key in batch["keys"])
    expected = {f"s{s}_{i:04d}" for s, n in enumerate([23, 5, 12]) for i in range(n)}
    assert set(seen) == expected and set(seen.values()) == {1}


def test_eval_transform_is_deterministic(uneven):
    config = LoaderConfig(batch_size=8, num_workers=2, image_size=16, split="train")
    runs = [{k: img for b in create_loader(uneven, config, mode="eval") for k, img in zip(b["keys"], b["image"])}
            for _ in range(2)]
    assert runs[0].keys() == runs[1].keys() and all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def _truncate_inside_third_member(path: Path) -> None:
    third = tarfile.open(path).getmembers()[2]  # t_0001.jpg: t_0000 stays whole
    path.write_bytes(path.read_bytes()[: third.offset_data + third.size // 2])


def test_bad_data_is_skipped_and_counted_exactly(tmp_path):
    rng = np.random.default_rng(0)
    good = photo_like(rng, 40, 30)
    shard = [Sample("ok_0", [1]),
             Sample("corrupt_0", [1], image=good[:3] + bytes(300)),
             Sample("ok_1", [0, 2]),
             Sample("truncated_img", [1], image=good[: len(good) // 2]),
             Sample("badjson_0", [1], json_bytes=b"{not json"),
             Sample("badjson_1", [1], json_bytes=b'{"labels": "3"}'),
             Sample("nolabel_0", []),
             Sample("nolabel_1", [7, -1]),  # outside the 3-label vocabulary
             Sample("ok_2", [2, 0, 9]),  # 9 dropped, 0 and 2 kept
             Sample("corrupt_1", [0], image=b"\xff\xd8\xff" + bytes(50))]
    root = write_shard_dir(tmp_path / "bad", [shard, [Sample(f"t_{i:04d}", [0]) for i in range(4)],
                                              [Sample("dup", [1]), Sample("ok_3", [1])]], num_labels=3)
    # A member without its pair, in a shard of its own.
    with tarfile.open(root / "train-000003.tar", "w") as tar:
        for name, data in [("lonely.jpg", good), ("alone.json", b'{"labels": [1]}'), ("dup.jpg", good),
                           ("dup.json", b'{"labels": [2]}')]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _truncate_inside_third_member(root / "train-000001.tar")
    info = json.loads((root / "info.json").read_text())
    info["shards"]["train"].append({"name": "train-000003.tar", "samples": 3})
    (root / "info.json").write_text(json.dumps(info))
    config = LoaderConfig(batch_size=3, num_workers=2, image_size=16, split="train", log_every_s=3600)
    loader = create_loader(root, config, mode="eval")
    batches = list(loader)
    keys = [k for b in batches for k in b["keys"]]
    labels = {k: [x for x in row if x >= 0] for b in batches for k, row in zip(b["keys"], b["labels"].tolist())}
    assert loader.skip_counts() == {"corrupt": 2, "truncated": 1, "invalid_json": 2, "no_label": 2,
                                    "truncated_tar": 1, "missing_json": 1, "missing_image": 1}
    # t_0000 survives the cut; a key repeated across shards gives two samples.
    assert sorted(keys) == sorted(["ok_0", "ok_1", "ok_2", "ok_3", "t_0000", "dup", "dup"])
    assert labels["ok_2"] == [0, 2] and labels["ok_1"] == [0, 2]
    assert loader.realised_label_counts().tolist() == [3, 3, 3]


def test_unreadable_shards_are_counted_and_an_all_bad_stream_stops_with_an_error(tmp_path):
    root = simple_shards(tmp_path / "s", [3, 3])
    (root / "train-000001.tar").write_bytes(b"")
    config = LoaderConfig(batch_size=2, num_workers=0, image_size=16, split="train")
    loader = create_loader([str(root / "train-000000.tar"), str(root / "train-000001.tar"),
                            "pipe:exit 3"], config, mode="eval")
    assert len(_keys(loader)) == 3
    assert loader.skip_counts() == {"truncated_tar": 1, "unreadable_shard": 1}
    (root / "train-000000.tar").write_bytes(b"not a tar file at all" * 30)
    with pytest.raises(UserError, match="without one usable sample"):
        list(create_loader(root, LoaderConfig(batch_size=2, num_workers=0, image_size=16)))


def test_brace_patterns_and_pipe_urls(uneven):
    config = LoaderConfig(batch_size=5, num_workers=0, image_size=16)
    pattern = str(uneven / "train-{000000..000002}.tar")
    assert len(_keys(create_loader(pattern, config, mode="eval"))) == 40
    piped = f"pipe:cat {uneven / 'train-000001.tar'}"
    assert sorted(_keys(create_loader(piped, config, mode="eval"))) == [f"s1_{i:04d}" for i in range(5)]
    with pytest.raises(UserError, match="epoch_images"):
        create_loader(pattern, config)
    assert len(list(create_loader(pattern, LoaderConfig(**{**config.__dict__, "epoch_images": 10})))) == 2


def test_user_errors_name_what_to_fix(tmp_path, uneven):
    with pytest.raises(UserError, match="no info.json and no train"):
        create_loader(tmp_path, SMALL)
    with pytest.raises(UserError, match="does not exist"):
        create_loader(str(tmp_path / "x-{0..3}.tar"), SMALL)
    with pytest.raises(UserError, match="lists no val shards"):
        create_loader(uneven, SMALL, mode="eval")
    with pytest.raises(UserError, match="batch_size"):
        create_loader(uneven, LoaderConfig(batch_size=0))
    with pytest.raises(UserError, match="sampling_q applies to training"):
        create_loader(uneven, LoaderConfig(sampling_q=0.5, split="train"), mode="eval")
    with pytest.raises(UserError, match="label_counts"):
        create_loader(str(uneven / "train-000000.tar"), LoaderConfig(sampling_q=0.5, epoch_images=8))
    with pytest.raises(UserError, match="rank 2"):
        create_loader(uneven, SMALL, rank=2, world_size=2)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="needs a CUDA device"):
            create_loader(uneven, LoaderConfig(decode="cuda"))


def test_hashtag_resampling_flattens_the_label_distribution(tmp_path):
    """Label 0 on 90% of images, label 1 on 10%: q=0 targets 50/50. Over ~1,600 delivered samples
    the share of label 1 is within 0.1 of 0.5 (its standard error, with replication, is ~0.02);
    without resampling it stays near 0.1."""
    shards = [[Sample(f"a{s}_{i}", [0 if i % 10 else 1]) for i in range(50)] for s in range(4)]
    root = write_shard_dir(tmp_path / "zipf", shards, num_labels=2, size=(24, 20))
    base = LoaderConfig(batch_size=16, num_workers=2, image_size=8, epoch_images=1600, shuffle_buffer=200)
    flat = create_loader(root, LoaderConfig(**{**base.__dict__, "sampling_q": 0.0}))
    natural = create_loader(root, base)
    for loader, target in ((flat, 0.5), (natural, 0.1)):
        assert len(list(loader)) == 100
        counts = loader.realised_label_counts()
        assert counts.sum() == 1600
        assert abs(counts[1] / counts.sum() - target) < 0.1, counts


def test_the_loader_counts_the_drawn_hashtag_apart_from_all_labels_of_the_sampled_images(tmp_path):
    """Label 0 on every image, label 1 also on 10 %: q=0 draws each hashtag half the time, so the
    drawn hashtags are ~50/50 while all labels of the sampled images are ~2/3 label 0 (a sample drawn
    for label 1 carries label 0 along). Over 1,600 delivered samples (2 workers) each share is within
    0.1 of its expectation (standard errors ~0.02); without resampling nothing is drawn."""
    shards = [[Sample(f"b{s}_{i}", [0] if i % 10 else [0, 1]) for i in range(50)] for s in range(4)]
    root = write_shard_dir(tmp_path / "multi", shards, num_labels=2, size=(24, 20))
    base = LoaderConfig(batch_size=16, num_workers=2, image_size=8, epoch_images=1600, shuffle_buffer=200)
    flat = create_loader(root, LoaderConfig(**{**base.__dict__, "sampling_q": 0.0}))
    assert len(list(flat)) == 100
    drawn, carried = flat.drawn_label_counts(), flat.realised_label_counts()
    assert drawn.sum() == 1600 and abs(drawn[1] / drawn.sum() - 0.5) < 0.1, drawn
    assert abs(carried[1] / carried.sum() - 1 / 3) < 0.1 and carried[0] == 1600, carried
    natural = create_loader(root, base)
    assert len(list(natural)) == 100 and natural.drawn_label_counts() is None
    assert all("drawn_labels" not in batch for batch in create_loader(root, LoaderConfig(
        **{**base.__dict__, "sampling_q": 0.5, "epoch_images": 64})))


def test_reads_shards_written_by_the_shard_builder(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "img").mkdir()
    with open(tmp_path / "table.jsonl", "w") as table:
        for i in range(12):
            (tmp_path / "img" / f"p{i}.jpg").write_bytes(photo_like(rng, 60, 50))
            table.write(json.dumps({"key": f"p{i}", "tags": ["cat" if i % 3 else "dog"],
                                    "image": f"img/p{i}.jpg"}) + "\n")
    Vocabulary([Label(0, "cat", 8), Label(1, "dog", 4)]).save(tmp_path / "vocab.json")
    build_shards(TableReader(tmp_path / "table.jsonl"),
                 BuildConfig(tmp_path / "shards", tmp_path / "vocab.json", str(tmp_path), shard_size=5,
                             val_fraction=0.0))
    loader = create_loader(tmp_path / "shards", LoaderConfig(batch_size=4, num_workers=0, image_size=16,
                                                             sampling_q=0.5))
    assert loader.batches_per_epoch == 3
    assert sum(len(b["keys"]) for b in loader) == 12
    eval_keys = _keys(create_loader(tmp_path / "shards", LoaderConfig(batch_size=4, num_workers=0,
                                                                      image_size=16, split="train"),
                                    mode="eval"))
    assert sorted(eval_keys) == sorted(f"p{i}" for i in range(12))


def test_device_decode_stream_ships_bytes_with_the_cpu_paths_boxes(uneven, monkeypatch):
    """The worker side of decode='cuda' (header-only boxes, encoded bytes in the batch), run in
    process with CUDA reported present, decoded by data.loader.gpu_decode on the CPU: the same samples
    in the same order as the CPU path, and pixels within the draft tolerance of it."""
    from data.loader.gpu_decode import decode_batch  # noqa: PLC0415

    config = LoaderConfig(batch_size=4, num_workers=0, image_size=24, shuffle_buffer=20, shuffle_initial=4,
                          epoch_images=12)
    cpu = list(create_loader(uneven, config))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    device_stream = create_loader(uneven, LoaderConfig(**{**config.__dict__, "decode": "auto"})).stream
    shipped = list(device_stream)
    assert [b["keys"] for b in shipped] == [b["keys"] for b in cpu]
    for on_cpu, batch in zip(cpu, shipped):
        assert "image" not in batch and len(batch["jpeg"]) == len(batch["boxes"]) == 4
        images, kept, skips = decode_batch(batch["jpeg"], batch["boxes"], batch["flips"], 24, "cpu")
        assert kept == [0, 1, 2, 3] and not skips
        difference = (images.to(torch.int16) - on_cpu["image"].to(torch.int16)).abs().float().mean()
        assert difference < 2.0  # full-scale decode vs the CPU path's reduced-scale one (~0.3-0.7)

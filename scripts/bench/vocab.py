"""Benchmark: exact tag counting of a YFCC100M-format corpus, ours against a plain Python loop.

Input: a seeded 23-column YFCC100M TSV (default 1,000,000 rows, ~460 bytes a line like the real
file) whose user tags follow a Zipf law (exponent 1 over a million distinct tags; 41% of rows
untagged and ~6.6 tags on a tagged row, as in the real sample), with realistic other columns:
URL-encoded titles and descriptions (some holding HTML), flickr URLs, CC licences, dates, a few
videos.

- ours: data.vocab.counting.count_tags over data.corpus.yfcc.YfccReader, --workers processes
  (canonicalisation included: NFKC, casefold, joins, stoplist).
- baseline: a single-process ``csv.reader`` loop that splits the tags field on ',',
  ``unquote_plus``-decodes and canonicalises each tag (the same TagCanonicalizer) and updates a
  ``collections.Counter`` with the row's set: the same job, so its counts must equal ours exactly
  (checked). A raw loop that only decodes (no canonicalisation, different counts) is timed too and
  reported as ``ratio_vs_raw_loop``, so the JSON line shows both anchors.

The YFCC100M tokenizer (numpy over a block's bytes) is kept apart from pyarrow.csv, which the table
reader uses, only because it is faster; the same run measures both on the same blocks, in this one
process and one thread each: ours is ``YfccReader.read_chunk(tags_only=True)`` (the shared line rules,
the tokenizer, the video filter and the tag split); the anchor is the shared line rules
(``damaged_lines``, as the table reader runs them) then ``pyarrow.csv.read_csv`` (tab separated,
no quoting, three columns as strings), the video filter and ``pyarrow.compute.split_pattern``. Both
must give the same keys and raw tag lists (checked), and both figures are in the JSON line
(``tokenizer``).

Both run in this process on the same file (in the page cache). With --memory, each of --memory-rows
(default 1 M and 4 M) is then counted in a fresh subprocess that reports its peak RSS and its
workers', to show that memory follows the number of distinct tags, not rows. Wall-clock rows/s are what the JSON line
reports; CPU seconds are printed too because a shared machine makes wall time noisy.

Last line: {"bench": "vocab", "ours": rows/s, "baseline": rows/s, "unit": "rows/s", "ratio": ..., ...}
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from data.corpus.lines import damaged_lines, line_ends, read_block
from data.corpus.yfcc import COLUMNS_23, YfccReader, format_line
from data.errors import cli_main
from data.vocab.counting import count_tags
from data.vocab.tags import TagCanonicalizer

DISTINCT_TAGS = 1_000_000
ZIPF_EXPONENT = 1.0
UNTAGGED = 0.41
MEAN_TAGS = 6.6
SYLLABLES = ("ka lo mi ne ru sa to vi ze an el or us bri sta gra pol mer tin dor cha que lu "
             "ber wood lake sun bay hill park red blu ver mon").split()
LICENSES = (  # (name, url code, share of the real sample)
    ("Attribution-NonCommercial-ShareAlike License", "by-nc-sa", 0.274),
    ("Attribution-NonCommercial-NoDerivs License", "by-nc-nd", 0.262),
    ("Attribution License", "by", 0.173),
    ("Attribution-NonCommercial License", "by-nc", 0.134),
    ("Attribution-ShareAlike License", "by-sa", 0.100),
    ("Attribution-NoDerivs License", "by-nd", 0.057),
)
DEVICES = ("Canon+EOS+400D+DIGITAL", "NIKON+D90", "Apple+iPhone+4", "Canon+PowerShot+S2+IS", "",
           "Panasonic+DMC-ZS10", "SONY+DSC-W55", "FUJIFILM+FinePix+S5600")


def words(rng: np.random.Generator, n: int, parts: tuple[int, int] = (2, 5)) -> list[str]:
    """n pronounceable pseudo-words."""
    counts = rng.integers(*parts, size=n).tolist()
    picks = rng.integers(0, len(SYLLABLES), size=(n, parts[1])).tolist()
    return ["".join([SYLLABLES[j] for j in row[:k]]) for row, k in zip(picks, counts)]


def tag_vocabulary(rng: np.random.Generator, n: int) -> np.ndarray:
    """The user_tags cells of n distinct tags, URL-encoded as in the real file: multi-word tags
    ('key+west'), capitalised spellings, a few CJK ones and some with digits."""
    base = words(rng, n)
    kind = rng.random(n)
    tags = []
    for i, word in enumerate(base):
        if kind[i] < 0.15:
            word = f"{word} {base[(i * 7 + 3) % n]}"
        elif kind[i] < 0.20:
            word = word.capitalize()
        elif kind[i] < 0.24:
            word = "猫犬花山川東京"[i % 7] + word[:3]
        elif kind[i] < 0.30:
            word = f"{word}{i % 100}"
        # quote_plus is the identity on the plain ASCII words, and slow: call it when it matters.
        tags.append(word.replace(" ", "+") if word.isascii() else urllib.parse.quote_plus(word))
    return np.array(tags, dtype=object)


def text_pool(rng: np.random.Generator, n: int, mean_words: float, html: float) -> list[str]:
    """URL-encoded titles or descriptions of varied length, a share of them with HTML links."""
    lengths = rng.geometric(1 / mean_words, size=n)
    vocabulary = words(rng, int(lengths.sum()), (1, 4))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    with_html = rng.random(n) < html
    pool = []
    for i in range(n):
        text = " ".join(vocabulary[bounds[i]:bounds[i + 1]])
        if with_html[i]:
            text += f' <a href="http://www.flickr.com/photos/{i}/">more</a>'
        pool.append(urllib.parse.quote_plus(text))
    return pool


BLOCK_ROWS = 100_000


def generate(path: Path, rows: int, seed: int = 0, workers: int = 2, progress: bool = True) -> None:
    """Write a YFCC100M-format corpus of ``rows`` lines. Deterministic for a seed whatever
    ``workers``: the shared pools come from the seed, each block of rows from (seed, block)."""
    rng = np.random.default_rng([seed, 0])
    cdf = np.cumsum(np.arange(1, DISTINCT_TAGS + 1, dtype=np.float64) ** -ZIPF_EXPONENT)
    pools = {"vocabulary": tag_vocabulary(rng, DISTINCT_TAGS), "cdf": cdf / cdf[-1],
             "titles": text_pool(rng, 20_000, 3, 0.0), "descriptions": text_pool(rng, 20_000, 17, 0.15),
             "users": [(f"{rng.integers(10**7, 10**8)}@N0{k % 8}", name)
                       for k, name in enumerate(words(rng, 50_000))]}
    blocks = [(seed, start, min(BLOCK_ROWS, rows - start)) for start in range(0, rows, BLOCK_ROWS)]
    with multiprocessing.get_context("fork").Pool(workers, _set_pools, (pools,)) as pool, \
            open(path, "w", encoding="utf-8") as f:
        for done, text in enumerate(pool.imap(_block, blocks), 1):
            f.write(text)
            if progress:
                print(f"  generated {min(done * BLOCK_ROWS, rows):,} / {rows:,} rows", file=sys.stderr, flush=True)


_POOLS: dict = {}


def _set_pools(pools: dict) -> None:
    _POOLS.update(pools)


def _block(block: tuple[int, int, int]) -> str:
    seed, start, n = block
    return "".join(_lines(np.random.default_rng([seed, 1, start]), n, **_POOLS))


def _lines(rng: np.random.Generator, n: int, vocabulary: np.ndarray, cdf: np.ndarray, titles: list[str],
           descriptions: list[str], users: list[tuple[str, str]]) -> Iterator[str]:
    shares = np.array([share for *_, share in LICENSES])
    tagged = rng.random(n) >= UNTAGGED
    per_row = np.where(tagged, np.minimum(rng.geometric(1 / MEAN_TAGS, size=n), 75), 0)
    ranks = np.minimum(np.searchsorted(cdf, rng.random(int(per_row.sum()))), DISTINCT_TAGS - 1)
    cells = vocabulary[ranks].tolist()
    bounds = np.concatenate([[0], np.cumsum(per_row)]).tolist()
    photo = rng.integers(10**8, 10**10, size=n).tolist()
    user = rng.integers(0, len(users), size=n).tolist()
    title = rng.integers(0, len(titles), size=n).tolist()
    description = np.where(rng.random(n) < 0.5, rng.integers(0, len(descriptions), size=n), -1).tolist()
    licence = rng.choice(len(LICENSES), size=n, p=shares).tolist()
    geo = (rng.random(n) < 0.4).tolist()
    taken = rng.integers(1_100_000_000, 1_400_000_000, size=n).tolist()
    secrets = rng.integers(16**9, 16**10, size=(n, 2)).tolist()
    device = rng.integers(0, len(DEVICES), size=n).tolist()
    video = (rng.random(n) < 0.003).tolist()
    for i in range(n):
        nsid, nickname = users[user[i]]
        pid, (secret, original) = photo[i], secrets[i]
        server, farm = 1000 + pid % 9000, 1 + pid % 9
        name, code, _ = LICENSES[licence[i]]
        yield format_line({
            "photo_id": pid, "user_nsid": nsid, "user_nickname": nickname,
            "date_taken": time.strftime("%Y-%m-%d %H:%M:%S.0", time.gmtime(taken[i])),
            "date_uploaded": taken[i] + 86_400, "capture_device": DEVICES[device[i]],
            "title": titles[title[i]], "description": descriptions[description[i]] if description[i] >= 0 else "",
            "user_tags": ",".join(cells[bounds[i]:bounds[i + 1]]),
            "longitude": f"{(pid % 36000) / 100 - 180:.6f}" if geo[i] else "",
            "latitude": f"{(pid % 18000) / 100 - 90:.6f}" if geo[i] else "",
            "accuracy": 16 if geo[i] else "",
            "page_url": f"http://www.flickr.com/photos/{nsid}/{pid}/",
            "download_url": f"http://farm{farm}.staticflickr.com/{server}/{pid}_{secret:010x}.jpg",
            "license_name": name, "license_url": f"http://creativecommons.org/licenses/{code}/2.0/",
            "server_id": server, "farm_id": farm, "secret": f"{secret:010x}",
            "secret_original": f"{original:010x}", "extension": "jpg", "marker": int(video[i]),
        })


def baseline(path: Path, canonicalize: bool = True) -> tuple[int, collections.Counter]:
    """(rows, counts): the plain single-process ``csv`` + ``Counter`` loop.

    With ``canonicalize`` it does the vocabulary builder's job and must produce exactly our counts
    (each tag decoded, canonicalised, counted once per image); without, it only decodes raw tags,
    a lower bound on any plain loop's cost that is printed for reference.
    """
    canon = TagCanonicalizer.from_files() if canonicalize else None
    counts: collections.Counter = collections.Counter()
    rows = 0
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            rows += 1
            if len(row) != 23 or not row[8] or row[22] == "1":  # malformed, untagged, video
                continue
            tags = {urllib.parse.unquote_plus(tag) for tag in row[8].split(",") if tag}
            if canon is not None:
                tags = set(canon.canonical_set(tags))
            counts.update(tags)
    return rows, counts


def ours(path: Path, workers: int) -> tuple[int, dict[str, int]]:
    """(rows, counts of canonical tags) by the parallel exact counter."""
    result = count_tags(YfccReader(path), TagCanonicalizer.from_files(), workers=workers, progress=False)
    return result.rows, result.counts


def tokenize_ours(reader: YfccReader, blocks: list) -> tuple[list, list]:
    """Keys and raw tag lists of every photo, by the YFCC100M reader's own tokenizer."""
    keys, tags = [], []
    for block in blocks:
        batch = reader.read_chunk(block, tags_only=True)
        keys.append(batch.keys)
        tags.append(batch.tags)
    return keys, tags


def tokenize_pyarrow(reader: YfccReader, blocks: list) -> tuple[list, list]:
    """The same by pyarrow.csv, after the same line rules (as the table reader runs them)."""
    read = pcsv.ReadOptions(column_names=list(COLUMNS_23), use_threads=False, block_size=1 << 30)
    parse = pcsv.ParseOptions(delimiter="\t", quote_char=False, invalid_row_handler=lambda row: "skip")
    convert = pcsv.ConvertOptions(include_columns=["photo_id", "user_tags", "marker"], strings_can_be_null=False,
                                  column_types={c: pa.string() for c in ("photo_id", "user_tags", "marker")})
    keys, tags = [], []
    for block in blocks:
        data, size = read_block(reader.path, block)
        if damaged_lines(data, size, line_ends(data, size), reader.max_line_bytes):
            raise SystemExit("the benchmark corpus has malformed lines: the comparison is invalid")
        table = pcsv.read_csv(pa.BufferReader(pa.py_buffer(data)[:size]), read_options=read,
                              parse_options=parse, convert_options=convert)
        table = table.filter(pc.not_equal(table["marker"], "1"))
        cells = table["user_tags"].combine_chunks()
        lists = pc.split_pattern(pc.if_else(pc.equal(cells, ""), pa.scalar(None, pa.string()), cells), ",")
        flat = pc.list_flatten(lists)
        if pc.any(pc.equal(flat, "")).as_py():  # empty items (a trailing comma) hold no tag
            raise SystemExit("empty tags in the benchmark corpus: the comparison is invalid")
        keys.append(table["photo_id"].combine_chunks())
        tags.append(pc.fill_null(lists, pa.scalar([], pa.list_(pa.string()))))
    return keys, tags


def tokenizers(path: Path) -> dict:
    """Rows/s and CPU µs per row of both tokenizers over the same blocks, one thread each."""
    reader = YfccReader(path)
    blocks = list(reader.chunks())
    results, figures = {}, {}
    for name, fn in (("ours", tokenize_ours), ("pyarrow_csv", tokenize_pyarrow)):
        fn(reader, blocks[:1])  # warm up
        cpu, wall = time.process_time(), time.perf_counter()
        results[name] = fn(reader, blocks)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows = sum(len(k) for k in results[name][0])
        figures[name] = {"rows_per_s": round(rows / wall), "cpu_us_per_row": round(1e6 * cpu / rows, 2)}
        print(f"tokenizer {name}: {rows:,} photos in {wall:.2f} s ({rows / wall:,.0f} rows/s; "
              f"{1e6 * cpu / rows:.2f} CPU µs/row)", flush=True)
    (ours_keys, ours_tags), (arrow_keys, arrow_tags) = results["ours"], results["pyarrow_csv"]
    if not (pa.chunked_array(ours_keys).equals(pa.chunked_array(arrow_keys))
            and pa.chunked_array(ours_tags).equals(pa.chunked_array(arrow_tags))):
        raise SystemExit("the two tokenizers disagree: the benchmark is invalid")
    figures["ratio"] = round(figures["ours"]["rows_per_s"] / figures["pyarrow_csv"]["rows_per_s"], 2)
    return figures


def timed(fn, *args) -> tuple[tuple, float, float]:
    """(result, wall seconds, CPU seconds of this process and its finished children)."""
    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    wall, used = time.perf_counter(), cpu()
    result = fn(*args)
    return result, time.perf_counter() - wall, cpu() - used


def peak_memory(path: Path, workers: int) -> dict:
    """Count ``path`` in a fresh process; its peak RSS and its workers' (MiB)."""
    done = subprocess.run([sys.executable, __file__, "--count-only", str(path), "--workers", str(workers)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def count_only(path: Path, workers: int) -> None:
    rows, counts = ours(path, workers)
    distinct = len(counts)
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"rows": rows, "distinct_tags": distinct, "parent_mib": round(own.ru_maxrss / 1024, 1),
                      "worker_mib": round(kids.ru_maxrss / 1024, 1),
                      "total_mib": round((own.ru_maxrss + workers * kids.ru_maxrss) / 1024, 1)}))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the speed corpus")
    parser.add_argument("--workers", type=int, default=2, help="our counting processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the generated corpora here (default: a temp dir)")
    parser.add_argument("--memory", action="store_true",
                        help="also measure the peak RSS of counting --memory-rows (generates those corpora; "
                             "about two more minutes on 2 cores)")
    parser.add_argument("--memory-rows", default="1000000,4000000",
                        help="corpus sizes whose peak RSS --memory measures, comma separated")
    parser.add_argument("--count-only", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.count_only:
        count_only(args.count_only, args.workers)
        return
    with tempfile.TemporaryDirectory(prefix="bench-vocab-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)

        def corpus(rows: int) -> Path:
            path = workdir / f"yfcc-{rows}-seed{args.seed}.tsv"
            if not path.exists():
                print(f"generating {rows:,} rows -> {path}", flush=True)
                generate(path.with_suffix(".part"), rows, args.seed, args.workers)
                path.with_suffix(".part").rename(path)
            return path

        path = corpus(args.rows)
        print(f"corpus: {path.stat().st_size / args.rows:.0f} bytes/row", flush=True)
        (rows, counts), wall, cpu = timed(ours, path, args.workers)
        print(f"ours ({args.workers} workers): {rows:,} rows, {len(counts):,} canonical tags in {wall:.2f} s "
              f"({rows / wall:,.0f} rows/s; {cpu:.2f} CPU s)", flush=True)
        (base_rows, base_counts), base_wall, base_cpu = timed(baseline, path)
        print(f"baseline (csv + Counter, same canonical counts): {base_rows:,} rows, {len(base_counts):,} "
              f"tags in {base_wall:.2f} s ({base_rows / base_wall:,.0f} rows/s; {base_cpu:.2f} CPU s)", flush=True)
        if dict(base_counts) != counts:
            raise SystemExit("ours and the baseline disagree on the counts: the benchmark is invalid")
        (_, raw_counts), raw_wall, _ = timed(baseline, path, False)
        print(f"reference (csv + Counter, raw decoded tags, no canonicalisation): {len(raw_counts):,} tags "
              f"in {raw_wall:.2f} s ({base_rows / raw_wall:,.0f} rows/s)", flush=True)
        tokenizer = tokenizers(path)
        memory = {}
        if args.memory:
            for size in (int(s) for s in args.memory_rows.split(",") if s):
                memory[size] = peak_memory(corpus(size), args.workers)
                print(f"peak RSS at {size:,} rows: {memory[size]}", flush=True)
        result = {"bench": "vocab", "ours": round(rows / wall), "baseline": round(base_rows / base_wall),
                  "unit": "rows/s", "ratio": round((rows / wall) / (base_rows / base_wall), 2),
                  "rows": rows, "bytes_per_row": round(path.stat().st_size / rows),
                  "workers": args.workers, "cpu_s": {"ours": round(cpu, 2), "baseline": round(base_cpu, 2)},
                  "cpu_ratio": round(base_cpu / cpu, 2), "cpus": os.cpu_count(), "counts_equal": True,
                  "raw_loop_rows_per_s": round(base_rows / raw_wall),
                  "ratio_vs_raw_loop": round((rows / wall) / (base_rows / raw_wall), 2),
                  "cpu_us_per_row": {"ours": round(1e6 * cpu / rows, 2), "baseline": round(1e6 * base_cpu / base_rows, 2)},
                  "tokenizer": tokenizer,
                  "peak_rss_mib": {str(k): v for k, v in memory.items()}}
        print(json.dumps(result))


if __name__ == "__main__":
    main()

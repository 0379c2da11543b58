"""Benchmark: shard building scaled out over nodes: per-node work by phase, the serial share, the overhead.

Input: a seeded 23-column YFCC100M TSV of --rows rows (default 500,000) whose download URLs point
into a YFCC100M mirror folder of a few thousand real photos (../shared/data: the 250 ImageNet
samples and the 398 hymenoptera photos, each in --replicas byte-distinct copies, see
real_photos.with_comment; synthetic photos when that folder is absent). Many rows name the same
photo and every 20th photo also sits under a second URL (the same bytes in another file), so most
rows are exact duplicates; 10% of rows have no label and 1% a URL with no photo. The vocabulary
is the photos' words.

The same build (scripts/build_shards.py, --workers per node, --shard-size 250 so that the few
thousand kept images make units enough for 4 nodes) runs as 1 node, then as 2 and 4 simulated
nodes: builder processes on this machine sharing --out, each layout twice:

- *together*: every node started at once, as on a cluster (on 2 cores, 4 nodes compete for them);
- *alone*: one process at a time, as if each node had the machine to itself: nodes 1..N-1 scan
  their share and are stopped once they wait for the plan, node 0 scans, plans and builds, then
  nodes 1..N-1 are started again and build (a node's figures add both of its runs, so the second
  start-up is counted against it).

Every layout runs --rounds times, alternating, and its round of least CPU is reported (the
machine is shared). Per node, from the status file it keeps (.build/node-<rank>.json): CPU
seconds by phase (its own process and its pools' workers, from the start of its setup), rows
scanned, image bytes read by its scan and by its build; its whole process's CPU (interpreter
start and imports too) from wait4. Then

- ``serial_fraction``: the plan phase's CPU over the total CPU of all nodes (the plan is the one
  serial step: node 0 alone, on the scan's manifest parts); goal <= 0.02;
- ``overhead``: the sum over nodes of the builder's CPU divided by the one-node CPU, nodes
  together; goal <= 1.10 (``overhead_alone``: the same, nodes alone; ``overhead_with_startup``
  counts each process whole, interpreter start included);
- ``max_node_share``: the busiest node's CPU over the one-node CPU (1/N would be a perfect split);
- ``same_bytes``: every layout's tars, info.json and report.json equal the one-node build's.

With --memory-rows (default 250k, 500k, 1M and 2M) the plan step alone runs in a fresh interpreter
on a synthetic manifest of that many labelled rows in the scan's part format (parts of 40,000 rows,
about one 16 MiB block of YFCC100M metadata; random key and image digests with 5% exact duplicates
and 1% missing images; every row labelled, the most the plan can be given per corpus row). Its
peak RSS is measured above what the interpreter holds after its imports (Linux' clear_refs resets
the peak). A least-squares line through (rows, peak) gives the bytes per row and, evaluated at
100 M rows plus the imports, the extrapolation to 100 M rows (goal <= 16 GiB); the plan's CPU per
row at the largest size times 100 M is its CPU there.

The JSON line reports CPU seconds (wall seconds of 4 processes on 2 cores say nothing about 4
machines: they are printed, not compared). Last line:
{"bench": "shards_scale", "ours": overhead at the most nodes, "baseline": 1.0,
 "unit": "cpu_sum_over_nodes/cpu_one_node", "ratio": ..., "serial_fraction": ..., ...}
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.corpus.yfcc import encode_tags, format_line
from data.errors import UserError, cli_main
from data.images.sources import url_md5
from data.shards.scan import IMAGE_MISSING, IMAGE_OK, PART_META_KEY, ROW_GROUP_ROWS, PartSummary, part_name
from data.skip_report import SkipReport
from data.vocab.tags import normalize
from data.vocab.vocabulary import Label, Vocabulary
from real_photos import HYMENOPTERA, IMAGENET, source_photos, with_comment

REPO = Path(__file__).resolve().parents[2]
BUILDER = REPO / "scripts" / "build_shards.py"
PHASES = ("setup", "scan", "wait", "plan", "build", "finalize")
NOISE_TAGS = ("holiday", "2015", "iphone", "family", "summer", "nikon")


def make_world(root: Path, rows: int, replicas: int, seed: int = 0) -> tuple[Path, Path, Path, int]:
    """The TSV, the mirror folder, vocab.json, and the number of distinct image files."""
    photos = source_photos(IMAGENET, extra=HYMENOPTERA)
    rng = random.Random(seed)
    mirror = root / "mirror" / "data" / "images"
    urls, words = [], []
    for i, (name, data) in enumerate(photos):
        # ImageNet samples are named <wnid>_<class name>; the hymenoptera photos get one of 7 words.
        word = normalize(name.split("_", 1)[1]) if name[:1] == "n" and name[1:9].isdigit() else f"insect{i % 7}"
        for r in range(replicas):
            url = f"http://farm{r % 9 + 1}.staticflickr.com/{1000 + i}/{i}{r:03d}_{r:04x}.jpg"
            copy = with_comment(data, f"replica {r}")
            names = [url] + ([url.replace(".jpg", "_dup.jpg")] if (i + r) % 20 == 0 else [])
            for u in names:  # every 20th photo also under a second URL: the same bytes, another file
                digest = url_md5(u)
                folder = mirror / digest[:3] / digest[3:6]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{digest}.jpg").write_bytes(copy)
                urls.append(u)
                words.append(word)
    vocabulary = sorted(set(words))
    tsv = root / "yfcc100m_dataset.tsv"
    with open(tsv, "w", encoding="utf-8") as f:
        for row in range(rows):
            which = rng.randrange(len(urls))
            tags = [words[which]] if rng.random() > 0.1 else []  # 10% of rows: no label
            tags += rng.sample(NOISE_TAGS, rng.randint(0, 3))
            url = urls[which] if rng.random() > 0.01 else f"http://farm1.staticflickr.com/1/gone{row}.jpg"
            f.write(format_line({"photo_id": 10**10 + row, "user_nsid": f"{row % 5000}@N00",
                                 "user_tags": encode_tags(tags), "download_url": url,
                                 "page_url": f"http://www.flickr.com/photos/x/{10**10 + row}/",
                                 "license_name": "Attribution License",
                                 "license_url": "http://creativecommons.org/licenses/by/2.0/", "marker": 0}))
    vocab = root / "vocab.json"
    Vocabulary([Label(i, tag, 1) for i, tag in enumerate(vocabulary)]).save(vocab)
    return tsv, root / "mirror", vocab, len(urls)


class Layout:
    """One build of the world as ``nodes`` simulated nodes (builder processes sharing one --out)."""

    def __init__(self, root: Path, world: tuple[Path, Path, Path], nodes: int, workers: int, shard_size: int,
                 alone: bool) -> None:
        self.root, self.nodes, self.alone = root, nodes, alone
        self.out = root / f"out-{nodes}{'-alone' if alone else ''}"
        tsv, mirror, vocab = world
        self.arguments = ["--source", "yfcc100m", "--input", str(tsv), "--images", str(mirror), "--vocab", str(vocab),
                          "--out", str(self.out), "--workers", str(workers), "--num-nodes", str(nodes),
                          "--shard-size", str(shard_size), "--no-progress"]
        self.process_cpu = [0.0] * nodes
        self.phases = [dict.fromkeys(PHASES, 0.0) for _ in range(nodes)]
        self.reports: list[dict] = [{} for _ in range(nodes)]

    def start(self, rank: int) -> subprocess.Popen:
        log = open(self.root / f"node-{self.nodes}-{rank}.log", "ab")
        process = subprocess.Popen([sys.executable, str(BUILDER), *self.arguments, "--node-rank", str(rank)],
                                   stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
        log.close()
        return process

    def finish(self, rank: int, process: subprocess.Popen, killed: bool = False) -> None:
        """Reap ``process`` (node ``rank``), adding its CPU and its status file's phases to the node's."""
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0 and not killed:
            tail = (self.root / f"node-{self.nodes}-{rank}.log").read_text(errors="replace")[-2000:]
            raise UserError(f"node {rank} of the {self.nodes}-node build failed: {tail}")
        self.process_cpu[rank] += usage.ru_utime + usage.ru_stime
        report = json.loads((self.out / ".build" / f"node-{rank}.json").read_text())
        for phase, cost in report["phases"].items():
            self.phases[rank][phase] += cost["cpu_s"]
        self.reports[rank] = {**report, "scanned": self.reports[rank].get("scanned", report["scanned"])}

    def run(self) -> dict:
        """Together: every node at once, as on a cluster. Alone: one process at a time, so that no
        two compete for this machine's cores: nodes 1..N-1 scan their share and are stopped once
        they wait for the plan, node 0 scans, plans and builds, then nodes 1..N-1 are started
        again and build (each node's figures add both of its runs)."""
        shutil.rmtree(self.out, ignore_errors=True)
        started = time.perf_counter()
        if not self.alone:
            processes = [self.start(rank) for rank in range(self.nodes)]
            for rank, process in enumerate(processes):
                self.finish(rank, process)
        else:
            for rank in range(1, self.nodes):
                process = self.start(rank)
                while process.poll() is None and self._phase(rank) != "wait":
                    time.sleep(0.005)
                process.send_signal(signal.SIGKILL)
                self.finish(rank, process, killed=True)
            for rank in range(self.nodes):
                self.finish(rank, self.start(rank))
        wall = time.perf_counter() - started
        digests, info = output_digests(self.out), json.loads((self.out / "info.json").read_text())
        shutil.rmtree(self.out)
        return {"nodes": self.nodes, "alone": self.alone, "digests": digests, "info": info, "wall_s": round(wall, 1),
                "process_cpu": self.process_cpu, "phases": self.phases,
                "plan_wall_s": self.reports[0]["phases"]["plan"]["wall_s"],
                "scanned_rows": [report["scanned"]["records"] for report in self.reports],
                "scan_image_bytes": [report["scanned"]["image_bytes"] for report in self.reports],
                "build_image_bytes": [report["built_image_bytes"] for report in self.reports]}

    def _phase(self, rank: int) -> str | None:
        try:
            return json.loads((self.out / ".build" / f"node-{rank}.json").read_text())["phase"]
        except (OSError, ValueError, KeyError):
            return None


def output_digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.iterdir()) if p.suffix == ".tar" or p.name in ("info.json", "report.json")}


# --- the plan's memory ------------------------------------------------------------------------

# The plan step alone in a fresh interpreter. Linux's clear_refs resets the peak RSS (VmHWM) to the
# current RSS once the imports are done, so the peak read after the plan is the plan's own.
_PLAN_MEMORY = r"""
import json, resource, sys, time
from pathlib import Path
from data.shards.plan import make_plan

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
cpu, wall = time.process_time(), time.perf_counter()
directory, parts = Path(sys.argv[1]), int(sys.argv[2])
plan = make_plan(directory, parts, 1000, {}, "settings", "scan", directory)
print(json.dumps({"base": base, "peak": status("VmHWM"), "cpu_s": time.process_time() - cpu,
                  "wall_s": time.perf_counter() - wall, "units": len(plan.units)}))
"""


def synthetic_manifest(directory: Path, rows: int, per_part: int = 40_000, seed: int = 0) -> int:
    """``rows`` labelled rows in the scan's part format (see the module docstring); returns the
    number of parts."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    parts = 0

    def fixed(values: np.ndarray) -> pa.Array:
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(values), [None, pa.py_buffer(values.tobytes())])

    for start in range(0, rows, per_part):
        n = min(per_part, rows - start)
        ids = np.arange(start, start + n)
        keys = [str(10**10 + i) for i in ids]
        key_hash = rng.integers(0, 256, (n, 16), dtype=np.uint8)
        digest = rng.integers(0, 256, (n, 16), dtype=np.uint8)
        copies = rng.random(n) < 0.05  # exact duplicates of an earlier row of the part
        digest[copies] = digest[rng.integers(0, max(1, n // 2), copies.sum())]
        status = np.where(rng.random(n) < 0.01, IMAGE_MISSING, IMAGE_OK).astype(np.int8)
        table = pa.table({
            "key_hash": fixed(key_hash), "image": pa.array(status), "val": pa.array(rng.random(n) < 0.02),
            "digest": fixed(digest), "detail": fixed(rng.integers(0, 256, (n, 16), dtype=np.uint8)),
            "source_key": pa.array(keys), "key": pa.array(keys),
            "labels": pa.array([[int(i % 1000)] for i in ids], pa.list_(pa.int32())),
            "tags": pa.array([["tag", "other"]] * n, pa.list_(pa.string())),
            "source_kind": pa.array(np.ones(n, np.int8)),
            "source_path": pa.array([f"/data/yfcc100m/data/images/{k[:3]}/{k[3:6]}/{k}.jpg" for k in keys]),
            "member": pa.nulls(n, pa.string()), "offset": pa.array(np.zeros(n, np.int64)),
            "size": pa.array(np.zeros(n, np.int64)), "inline": pa.nulls(n, pa.binary()),
            "provenance": pa.array(['{"photo_id":"%s"}' % k for k in keys]),
        })
        meta = {PART_META_KEY: json.dumps(PartSummary(parts, n, n, SkipReport()).to_dict()).encode()}
        pq.write_table(table.replace_schema_metadata(meta), directory / part_name(parts), row_group_size=ROW_GROUP_ROWS)
        parts += 1
    return parts


def plan_memory(root: Path, rows_list: list[int]) -> dict:
    """The plan step's peak memory and time on synthetic manifests of each size, and a line through
    the peaks extrapolated to 100 M rows."""
    points = []
    for rows in rows_list:
        directory = root / f"manifest-{rows}"
        parts = synthetic_manifest(directory, rows)
        done = subprocess.run([sys.executable, "-c", _PLAN_MEMORY, str(directory), str(parts)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        points.append({"rows": rows, "above_imports": measured["peak"] - measured["base"], "peak": measured["peak"],
                       "cpu_s": measured["cpu_s"], "wall_s": measured["wall_s"]})
        print(f"plan over {rows} labelled rows: {measured['cpu_s']:.2f} CPU s, {measured['wall_s']:.2f} s wall; "
              f"peak RSS {measured['peak'] / 2**20:.0f} MiB, {(measured['peak'] - measured['base']) / 2**20:.0f} MiB "
              "above the imports", flush=True)
        shutil.rmtree(directory)
    x = np.array([p["rows"] for p in points], float)
    y = np.array([p["above_imports"] for p in points], float)
    slope, intercept = np.polyfit(x, y, 1) if len(points) > 1 else (y[0] / x[0], 0.0)
    imports = points[-1]["peak"] - points[-1]["above_imports"]
    at_100m = imports + intercept + slope * 100e6
    largest = points[-1]
    return {"rows": [p["rows"] for p in points], "peak_mib": [round(p["peak"] / 2**20) for p in points],
            "above_imports_mib": [round(p["above_imports"] / 2**20) for p in points],
            "cpu_s": [round(p["cpu_s"], 2) for p in points], "wall_s": [round(p["wall_s"], 2) for p in points],
            "bytes_per_row": round(slope, 1), "largest_rows": largest["rows"],
            "peak_at_largest_mib": round(largest["peak"] / 2**20),
            "cpu_us_per_row": round(largest["cpu_s"] / largest["rows"] * 1e6, 2),
            "extrapolated_100m_gib": round(at_100m / 2**30, 2),
            "extrapolated_100m_cpu_s": round(largest["cpu_s"] / largest["rows"] * 100e6),
            "method": "plan step alone on synthetic manifests (every row labelled, 5% exact duplicates); "
                      "least-squares line through (rows, peak RSS above the imports), evaluated at 100 M rows, "
                      "plus the imports' RSS; CPU at 100 M rows: CPU per row at the largest size x 100 M"}


@cli_main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500_000, help="corpus rows")
    parser.add_argument("--replicas", type=int, default=5, help="byte-distinct copies of each real photo")
    parser.add_argument("--nodes", default="1,2,4", help="layouts to run (the first must be 1)")
    parser.add_argument("--workers", type=int, default=1, help="workers per node")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of every layout, alternating; each layout's round of least CPU is reported")
    parser.add_argument("--shard-size", type=int, default=250,
                        help="samples per shard (small, so that the few thousand kept images make enough units "
                             "to spread over the nodes)")
    parser.add_argument("--memory-rows", default="250000,500000,1000000,2000000",
                        help="manifest sizes for the plan's memory ('' to skip)")
    args = parser.parse_args()
    layouts = [int(n) for n in args.nodes.split(",")]
    if layouts[0] != 1:
        raise UserError("--nodes must start with 1 (the reference layout)")
    with tempfile.TemporaryDirectory(prefix="bench-shards-scale-") as tmp:
        root = Path(tmp)
        tsv, mirror, vocab, images = make_world(root, args.rows, args.replicas)
        print(f"{args.rows} rows over {images} image files ({tsv.stat().st_size >> 20} MiB of metadata) in {root}",
              flush=True)
        load = os.getloadavg()[0]
        plans = [(nodes, alone) for nodes in layouts for alone in ((False, True) if nodes > 1 else (False,))]
        best: dict[tuple[int, bool], dict] = {}
        reference = None
        same = True
        for round_ in range(args.rounds):
            for nodes, alone in plans:
                run = Layout(root, (tsv, mirror, vocab), nodes, args.workers, args.shard_size, alone).run()
                reference = reference or run["digests"]
                same = same and run["digests"] == reference
                cpu = sum(sum(p.values()) for p in run["phases"])
                print(f"round {round_ + 1}, {nodes} node(s) x {args.workers} worker(s){' alone' if alone else ''}: "
                      f"{run['wall_s']} s wall, {cpu:.1f} CPU s; per node by phase: "
                      + "; ".join(", ".join(f"{k} {v:.2f}" for k, v in p.items() if v) for p in run["phases"]),
                      flush=True)
                if (nodes, alone) not in best or cpu < sum(sum(p.values()) for p in best[nodes, alone]["phases"]):
                    best[nodes, alone] = run
        info = best[1, False]["info"]
        memory = plan_memory(root, [int(r) for r in args.memory_rows.split(",") if r]) if args.memory_rows else None
    one_node = best[1, False]
    one = sum(one_node["phases"][0].values())
    layouts_out = {}
    for (nodes, alone), run in best.items():
        per_node = [sum(p.values()) for p in run["phases"]]
        total = sum(per_node)
        plan = sum(p["plan"] for p in run["phases"])
        finalize = sum(p["finalize"] for p in run["phases"])
        layouts_out[f"{nodes}{'-alone' if alone else ''}"] = {
            "cpu_s_per_node_by_phase": [{k: round(v, 2) for k, v in p.items()} for p in run["phases"]],
            "cpu_s_per_node": [round(c, 2) for c in per_node], "cpu_s_total": round(total, 2),
            "max_node_share": round(max(per_node) / one, 3),
            "serial_fraction": round(plan / total, 4), "finalize_fraction": round(finalize / total, 4),
            "plan_cpu_s": round(plan, 2), "plan_wall_s": run["plan_wall_s"],
            "overhead": round(total / one, 3),
            "overhead_with_startup": round(sum(run["process_cpu"]) / one_node["process_cpu"][0], 3),
            "scanned_rows_per_node": run["scanned_rows"],
            "scan_image_mib_per_node": [round(b / 2**20, 1) for b in run["scan_image_bytes"]],
            "build_image_mib_per_node": [round(b / 2**20, 1) for b in run["build_image_bytes"]],
            "wall_s": run["wall_s"]}
    most = str(layouts[-1])
    last, alone = layouts_out[most], layouts_out.get(f"{most}-alone", layouts_out[most])
    result = {"bench": "shards_scale", "ours": last["overhead"], "baseline": 1.0,
              "unit": "cpu_sum_over_nodes/cpu_one_node", "ratio": last["overhead"],
              "serial_fraction": max(l["serial_fraction"] for l in layouts_out.values()),
              "overhead": last["overhead"], "overhead_alone": alone["overhead"],
              "max_node_share": last["max_node_share"], "same_bytes": same,
              "rows": args.rows, "images": images, "cpu_ms_per_row_one_node": round(one / args.rows * 1e3, 4),
              "kept": info["num_samples"]["total"], "skipped": info["skipped"]["counts"],
              "workers_per_node": args.workers, "cpus": os.cpu_count(), "load_before": round(load, 2),
              "layouts": layouts_out, "plan_memory": memory}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Engine benchmark: the per-part stages (hash, embed, optout) on the same images, in this
process and as Ray tasks on a local Ray with 1 and with 2 CPUs, in one run.

The images: `audit sample build --n 3000` (openclipart, 1,000 with --quick) written to a
temporary folder and ingested once in parts of `ROWS_PER_PART` rows, so two workers have
parts to share; every measured run works on its own fresh copy of that workspace.

What makes the comparison like for like:
- One thread everywhere: the in-process baseline runs under `threads.configure(1)`, and a Ray
  task configures the one CPU Ray gives it (`audit.engines.ray`), so "Ray, 1 CPU" and "in
  this process" do the same work on the same thread count; "Ray, 2 CPUs" is two such tasks.
- A fresh driver process for every engine's turn (spawned, as `audit hash WS` is a fresh
  process): the baseline does not run in the process that just built 3,000 images, whose
  heap and caches a Ray worker would not have.
- Start-up apart: `ray.init` is timed on its own (`ray_startup_s`), and a warm-up run on
  `WARMUP_PARTS` parts (Ray starts its worker processes, every engine imports its modules and
  loads its model) is timed on its own (`warmup_s`); neither is in the stage times.
- Several rounds (`REPEATS`, 2 with --quick), each running every engine once on a fresh Ray
  (so that a change in the machine's load falls on all engines alike); the median kept, min
  and max recorded.
- CPU time as well as wall time: the driver's (`time.process_time` and its finished child
  processes) plus, on Ray, what the tasks report (`audit.engines.ray.USAGE`). On a machine
  shared with other jobs the wall clock counts their time too; CPU time mostly does not.
  Ray's own daemons (raylet, GCS) are not counted: `cpu_per_row_ms` is the work, and
  `overhead_ray_1_cpu` (wall) is what Ray costs on top of it.

Overhead is the Ray 1-CPU median over the in-process median, minus one (goal <= 15%);
scaling efficiency is the 1-CPU median over twice the 2-CPU median (1.0 = perfect). With 2
workers on a 2-core machine the driver, Ray's daemons and any other job share those 2 cores,
so efficiency there is bounded below 1.0 by whatever else runs (`load_average` says how much
did); the JSON says so in `scaling_note`.

The in-process per-CPU-second rates feed the LAION-5B cost model (`laion_5b`, and the table
`cost_model_markdown` renders), which README.md "What LAION-5B would cost" carries between
its `engines-cost-model` markers: a run rewrites that block from the JSON it just wrote
(`tests/test_engines.py` checks the two agree). Every run also checks that the artefacts are
the same bytes on every engine.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import resource
import shutil
import statistics
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROWS_PER_PART = 250
WARMUP_PARTS = 2  # two parts: with 2 CPUs, both Ray workers start and import during warm-up
REPEATS = 3
STAGES = ("hash", "embed", "optout")
CONFIGS = (("in-process", 0), ("ray-1", 1), ("ray-2", 2))
LAION_5B = 5_850_000_000
MACHINE_CPUS = 64  # the cost model's machine size
USD_PER_CORE_HOUR = 0.04  # an assumed on-demand price of one CPU-hour, for the cost model
README_BEGIN = "<!-- engines-cost-model: begin (written by python -m audit.bench engines) -->"
README_END = "<!-- engines-cost-model: end -->"


def _cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _stage(name: str, ws: Path, sample: Path, engine: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds: this process's and its Ray tasks') of one stage."""
    from audit import embeddings, hashes, optouts

    usage = _ray_usage()
    t0, c0, r0 = time.perf_counter(), _cpu(), usage.cpu_seconds if usage else 0.0
    if name == "hash":
        hashes.compute(ws, workers=1, engine=engine)
    elif name == "embed":
        embeddings.compute(ws, workers=0, engine=engine)
    else:
        optouts.compute(
            ws,
            registry=sorted((sample / "optout").glob("registry-*")),
            cache=None,
            engine=engine,
        )
    tasks = (usage.cpu_seconds - r0) if usage and engine == "ray" else 0.0
    return time.perf_counter() - t0, _cpu() - c0 + tasks


def _driver(cpus: int, warm: str, ws: str, src: str) -> dict[str, Any]:
    """One engine's turn in a round, in a fresh driver process as `audit hash WS [--engine
    ray]` would be (so no engine inherits the heap or caches the bench built): on one thread,
    Ray started on `cpus` CPUs (0: the in-process engine), a warm-up on `warm`, then the
    measured stages on `ws`."""
    from audit import threads

    threads.configure(1)  # the baseline on one thread, like one Ray task
    engine = "ray" if cpus else "local"
    got: dict[str, Any] = {}
    if cpus:
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        got["startup"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        for s in STAGES:
            _stage(s, Path(warm), Path(src), engine)
        got["warmup"] = time.perf_counter() - t0
        got["load"] = round(os.getloadavg()[0], 2)
        got["stages"] = {s: _stage(s, Path(ws), Path(src), engine) for s in STAGES}
    finally:
        if cpus:
            ray.shutdown()
    return got


def _ray_usage() -> Any:
    try:
        from audit.engines.ray import USAGE
    except ImportError:
        return None
    return USAGE


def _vit_b_32_rate(n: int = 32) -> float:
    """ViT-B-32 image forward passes per CPU-second on one thread (random weights: the same
    arithmetic as trained ones), for the cost model; decoding is measured by the embed stage."""
    import torch

    from audit import embeddings

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = embeddings.load_model("ViT-B-32", "none")
        x = torch.randn(16, 3, 224, 224)
        model.encode_image_tensor(x[:2])
        c0 = time.process_time()
        for _ in range(n // 16):
            model.encode_image_tensor(x)
        return (n // 16) * 16 / (time.process_time() - c0)
    finally:
        torch.set_num_threads(threads)


def _outputs(ws: Path, stage: str) -> list[tuple[str, str]]:
    from audit.workspace import Workspace

    rec = Workspace.open(ws).stage(stage) or {}
    return [
        (o["path"], o["sha256"])
        for key in sorted(rec.get("parts", {}), key=int)
        for o in rec["parts"][key]["outputs"]
    ]


def _first_rows(shards: Path, out: Path, rows: int) -> None:
    """The first `rows` samples of webdataset shard 00000 (tar and its parquet), for warm-up."""
    import pyarrow.parquet as pq

    out.mkdir(parents=True)
    table = pq.read_table(shards / "00000.parquet").slice(0, rows)
    keys = set(table.column("key").to_pylist())
    pq.write_table(table, out / "00000.parquet")
    with tarfile.open(shards / "00000.tar") as src, tarfile.open(out / "00000.tar", "w") as dst:
        for member in src:
            if member.name.split("/")[-1].split(".")[0] in keys:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def run(out: Path, quick: bool = False, repeats: int | None = None) -> dict[str, Any]:
    from audit import metadata, sample
    from audit.workspace import atomic_write_json, atomic_write_text

    n = 1000 if quick else 3000
    repeats = repeats or (2 if quick else REPEATS)
    tmp = Path(tempfile.mkdtemp(prefix="audit-bench-engines-"))
    started = time.perf_counter()
    try:
        src = tmp / "sample"
        sample.build(src, n=n, seed=0)
        base, warm = tmp / "base", tmp / "warm"
        metadata.ingest(base, [src / "shards"], rows_per_part=ROWS_PER_PART)
        _first_rows(src / "shards", tmp / "warm-shards", WARMUP_PARTS * ROWS_PER_PART)
        metadata.ingest(warm, [tmp / "warm-shards"], rows_per_part=ROWS_PER_PART)
        runs: dict[str, list[dict[str, tuple[float, float]]]] = {c: [] for c, _ in CONFIGS}
        startup: dict[str, list[float]] = {c: [] for c, cpus in CONFIGS if cpus}
        warmup: dict[str, list[float]] = {c: [] for c, _ in CONFIGS}
        load: dict[str, list[float]] = {c: [] for c, _ in CONFIGS}
        same = True
        reference: dict[str, list[tuple[str, str]]] = {}
        # Rounds, each running every engine once, so that a change in the machine's load
        # during the bench falls on all three alike (not on whichever engine ran last).
        spawn = multiprocessing.get_context("spawn")
        for r in range(repeats):
            for config, cpus in CONFIGS:
                ws, warm_ws = tmp / f"{config}-{r}", tmp / f"{config}-warm-{r}"
                shutil.copytree(base, ws)
                shutil.copytree(warm, warm_ws)
                with ProcessPoolExecutor(1, mp_context=spawn) as driver:
                    got = driver.submit(_driver, cpus, str(warm_ws), str(ws), str(src)).result()
                if cpus:
                    startup[config].append(got["startup"])
                warmup[config].append(got["warmup"])
                load[config].append(got["load"])
                runs[config].append(got["stages"])
                for s in STAGES:
                    if config == "in-process" and r == 0:
                        reference[s] = _outputs(ws, s)
                    else:
                        same = same and _outputs(ws, s) == reference[s]
                shutil.rmtree(ws)
                shutil.rmtree(warm_ws)
        vit = _vit_b_32_rate()
        result = _summarise(
            n,
            repeats,
            runs,
            {c: _median(v) for c, v in startup.items()},
            {c: _median(v) for c, v in warmup.items()},
            load,
            same,
            vit,
            out,
        )
        result["bench_seconds"] = round(time.perf_counter() - started, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_json(out / "engines.json", result)
    atomic_write_text(out / "engines.md", _markdown(result))
    # the checkout's README, when `out` is its reports/bench/ (as in `make bench`); a --quick
    # run's rates are from a third of the images and do not go into it
    readme = out.resolve().parent.parent / "README.md"
    if not quick and out.resolve().parts[-2:] == ("reports", "bench") and readme.is_file():
        if sync_readme(readme, result):
            print(f"engines: rewrote the cost model in {readme} from {out / 'engines.json'}")
    return result


def _summarise(
    n: int,
    repeats: int,
    runs: dict[str, list[dict[str, tuple[float, float]]]],
    startup: dict[str, float],
    warmup: dict[str, float],
    load: dict[str, list[float]],
    same: bool,
    vit_rate: float,
    out: Path,
) -> dict[str, Any]:
    def wall(config: str, stage: str | None = None) -> list[float]:
        return [sum(v[0] for s, v in rep.items() if stage in (None, s)) for rep in runs[config]]

    def cpu(config: str, stage: str | None = None) -> list[float]:
        return [sum(v[1] for s, v in rep.items() if stage in (None, s)) for rep in runs[config]]

    def figures(stage: str | None) -> dict[str, Any]:
        med = {c: _median(wall(c, stage)) for c, _ in CONFIGS}
        cpu_med = {c: _median(cpu(c, stage)) for c, _ in CONFIGS}
        return {
            "wall_s": med,
            "wall_s_min_max": {
                c: [round(min(wall(c, stage)), 3), round(max(wall(c, stage)), 3)]
                for c, _ in CONFIGS
            },
            "cpu_s": cpu_med,
            "cpu_per_row_ms": {c: round(1000 * v / n, 3) for c, v in cpu_med.items()},
            "overhead_ray_1_cpu": round(med["ray-1"] / med["in-process"] - 1, 3),
            "cpu_overhead_ray_1_cpu": round(cpu_med["ray-1"] / cpu_med["in-process"] - 1, 3),
            "scaling_efficiency_2_cpu": round(med["ray-1"] / (2 * med["ray-2"]), 3),
            "rows_per_second_in_process": round(n / med["in-process"], 1),
            "rows_per_cpu_second": round(n / cpu_med["in-process"], 1),
        }

    per_stage = {s: figures(s) for s in STAGES}
    total = figures(None)
    cpus = os.cpu_count() or 1
    return {
        "images": n,
        "rows_per_part": ROWS_PER_PART,
        "parts": -(-n // ROWS_PER_PART),
        "warmup_rows": WARMUP_PARTS * ROWS_PER_PART,
        "repeats": repeats,
        "threads_per_task": 1,
        "cpus_on_machine": cpus,
        "load_average": load,  # 1-minute load when each measured run began, per round
        "ray_startup_s": startup,  # ray.init (median of the rounds), not in any stage time
        "warmup_s": warmup,  # run on the warm-up parts (median), not in any stage time
        "stages": per_stage,
        "total": total,
        "overhead_ray_1_cpu": total["overhead_ray_1_cpu"],
        "overhead_goal": 0.15,
        "scaling_efficiency_2_cpu": total["scaling_efficiency_2_cpu"],
        "scaling_note": (
            f"{cpus} CPUs on this machine: the 2 Ray workers share them with the driver, "
            "Ray's daemons and every other job (load_average), so 2 workers cannot give more "
            "than what 2 free cores give; efficiency here is a lower bound"
            if cpus <= 2
            else f"{cpus} CPUs on this machine"
        ),
        "artefacts_identical": same,
        "vit_b_32_images_per_cpu_second": round(vit_rate, 1),
        "laion_5b": _cost_model(per_stage, vit_rate, out),
    }


def _cost_model(
    per_stage: dict[str, dict[str, Any]], vit_rate: float, out: Path
) -> dict[str, dict[str, Any]]:
    """Core-hours and 64-CPU machine-hours for 5.85 billion rows, per stage, from the
    in-process per-CPU-second rates (and ingest's, from `ingest.json` when that bench ran)."""
    rates = {s: per_stage[s]["rows_per_cpu_second"] for s in STAGES}
    rates["embed_vit_b_32_image_tower"] = round(vit_rate, 1)
    ingest = out / "ingest.json"
    if ingest.is_file():  # `audit ingest` in one driver process: CPU rate of the ingest bench
        c = json.loads(ingest.read_text())["candidate"]
        rates = {"ingest": round(c["rows"] / c["cpu_seconds"], 1), **rates}
    model = {}
    for stage, rate in rates.items():
        core_hours = LAION_5B / rate / 3600
        model[stage] = {
            "rows_per_cpu_second": rate,
            "core_hours": round(core_hours),
            f"machines_{MACHINE_CPUS}_cpu_x_hours": round(core_hours / MACHINE_CPUS, 1),
        }
    return model


def cost_model_markdown(r: dict[str, Any]) -> str:
    """The README's LAION-5B table, from the bench's JSON (keys in `laion_5b`)."""
    notes = {
        "ingest": "in the driver (rows numbered in input order); `reports/bench/ingest.json`",
        "hash": "openclipart PNG, all four hashes; JPEG decodes faster (DCT scaling)",
        "embed": "decoding + the bundled tiny model (mostly decoding); with ViT-B-32 add the "
        "image tower's row",
        "embed_vit_b_32_image_tower": "one thread, random weights (same arithmetic); the "
        "text tower is not measured",
        "optout": "registries + embedded signals; the crawl is bound by network and "
        "politeness (1 request/s per host), not CPU",
    }
    m = r["laion_5b"]
    key = f"machines_{MACHINE_CPUS}_cpu_x_hours"
    rows = "\n".join(
        f"| {s} | {v['rows_per_cpu_second']:,} | {v['core_hours']:,} | {v[key]:,} | {notes.get(s, '')} |"
        for s, v in m.items()
    )
    # embed's row is decoding plus the tiny model; with ViT-B-32 the tower's row adds to it
    total = sum(v["core_hours"] for v in m.values())
    top = max(m, key=lambda s: m[s]["core_hours"])
    return (
        f"| stage (`laion_5b.<stage>`) | rows per CPU-second | core-hours | {MACHINE_CPUS}-CPU "
        "machine-hours | notes |\n|---|---|---|---|---|\n"
        f"{rows}\n\n"
        f"{top} dominates: {m[top]['core_hours']:,} of {total:,} core-hours "
        f"({m[top]['core_hours'] / total:.0%}), about ${total * USD_PER_CORE_HOUR:,.0f} in all at "
        f"an assumed ${USD_PER_CORE_HOUR} per core-hour. Measured on {r['images']:,} images, "
        f"{r['cpus_on_machine']} CPUs, 1-minute load {r['load_average']['in-process'][0]} "
        "when the in-process runs began."
    )


def sync_readme(readme: Path, r: dict[str, Any]) -> bool:
    """Rewrite the README's block between the cost-model markers; False if it has none."""
    text = readme.read_text("utf-8")
    pattern = re.compile(re.escape(README_BEGIN) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        return False
    block = f"{README_BEGIN}\n{cost_model_markdown(r)}\n{README_END}"
    new = pattern.sub(lambda _: block, text)
    if new != text:
        readme.write_text(new, "utf-8")
    return True


def _markdown(r: dict[str, Any]) -> str:
    configs = [c for c, _ in CONFIGS]
    rows = "\n".join(
        f"| {s} | "
        + " | ".join(f"{v['wall_s'][c]} ({v['cpu_per_row_ms'][c]})" for c in configs)
        + f" | {v['overhead_ray_1_cpu']:+.1%} | {v['cpu_overhead_ray_1_cpu']:+.1%} | "
        f"{v['scaling_efficiency_2_cpu']:.2f} |"
        for s, v in [*r["stages"].items(), ("total", r["total"])]
    )
    return f"""# Engines: in-process vs Ray (1 and 2 CPUs)

{r["images"]} openclipart images (`audit sample build --n {r["images"]}`), ingested in
{r["parts"]} parts of {r["rows_per_part"]} rows; one thread per task and in the baseline.
Median of {r["repeats"]} rounds, each running every engine once on a fresh copy, in a fresh driver
process (Ray newly started), after a warm-up on {r["warmup_rows"]} rows.
Machine: {r["cpus_on_machine"]} CPUs; 1-minute load when each measured run began (per round):
{json.dumps(r["load_average"])}. Not in the stage times: Ray start-up
{json.dumps(r["ray_startup_s"])} s, warm-up {json.dumps(r["warmup_s"])} s. Artefacts
identical on every engine: {r["artefacts_identical"]}.

Wall seconds (CPU ms per row: driver + tasks):

| stage | in-process | Ray 1 CPU | Ray 2 CPUs | overhead, wall (Ray 1 CPU) | overhead, CPU | scaling efficiency (2 CPUs) |
|---|---|---|---|---|---|---|
{rows}

Overhead {r["overhead_ray_1_cpu"]:+.1%} in wall time (goal <= {r["overhead_goal"]:.0%}),
{r["total"]["cpu_overhead_ray_1_cpu"]:+.1%} in CPU time (the steadier figure on a loaded
machine: other jobs stretch wall time, not the CPU time a run uses); scaling efficiency
{r["scaling_efficiency_2_cpu"]:.2f}. {r["scaling_note"]}.

## LAION-5B (5.85 billion rows)

{cost_model_markdown(r)}

Regenerate: `python -m audit.bench engines --out reports/bench` (part of `make bench`; it also
rewrites this table in README.md). This run took {r.get("bench_seconds", "?")} s.
"""

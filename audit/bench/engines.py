"""Engine benchmark: the per-part stages (hash, embed, optout) on the same images, in this
process on one core, and as Ray tasks on a local Ray with 1 and with 2 CPUs.

The images: `audit sample build --n 3000` (openclipart, 1,000 in quick mode) written to a
temporary folder and ingested once in parts of `ROWS_PER_PART` rows, so two workers have
parts to share; each engine works on its own copy of that workspace. Overhead is the Ray
1-CPU time over the in-process time, minus one; scaling efficiency is the 1-CPU time over
twice the 2-CPU time (1.0 = perfect). Ray start-up is measured on its own and left out of the
stage times. In-process rates per CPU-second (this process's CPU time, which other jobs on a
shared machine do not inflate) feed the LAION-5B cost model in README.md, with the ViT-B-32
forward rate measured here too.

Every run also checks that the artefacts are the same bytes on every engine. On a machine
shared with other jobs the times are noisy; the ratios from one run are what to read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

ROWS_PER_PART = 250
STAGES = ("hash", "embed", "optout")
LAION_5B = 5_850_000_000


def _stage(name: str, ws: Path, sample: Path, engine: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one stage."""
    from audit import embeddings, hashes, optouts

    t0, c0 = time.perf_counter(), time.process_time()
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
    return time.perf_counter() - t0, time.process_time() - c0


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


def run(out: Path, quick: bool = False) -> dict[str, Any]:
    import ray

    from audit import metadata, sample
    from audit.workspace import atomic_write_json, atomic_write_text

    n = 1000 if quick else 3000
    tmp = Path(tempfile.mkdtemp(prefix="audit-bench-engines-"))
    try:
        src = tmp / "sample"
        sample.build(src, n=n, seed=0)
        base = tmp / "base"
        metadata.ingest(base, [src / "shards"], rows_per_part=ROWS_PER_PART)
        times: dict[str, dict[str, float]] = {}
        cpu: dict[str, float] = {}
        startup: dict[str, float] = {}
        same = True
        reference: dict[str, list[tuple[str, str]]] = {}
        for config, cpus in (("in-process", 0), ("ray-1", 1), ("ray-2", 2)):
            ws = tmp / config
            shutil.copytree(base, ws)
            if cpus:
                t0 = time.perf_counter()
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
                startup[config] = round(time.perf_counter() - t0, 2)
            try:
                engine = "ray" if cpus else "local"
                measured = {s: _stage(s, ws, src, engine) for s in STAGES}
                times[config] = {s: round(wall, 2) for s, (wall, _) in measured.items()}
                if not cpus:  # in this process on one core: CPU time is the per-core cost
                    cpu = {s: c for s, (_, c) in measured.items()}
            finally:
                if cpus:
                    ray.shutdown()
            for s in STAGES:
                if config == "in-process":
                    reference[s] = _outputs(ws, s)
                else:
                    same = same and _outputs(ws, s) == reference[s]
        result = _summarise(n, times, cpu, startup, same, _vit_b_32_rate())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_json(out / "engines.json", result)
    atomic_write_text(out / "engines.md", _markdown(result))
    return result


def _summarise(
    n: int,
    times: dict[str, dict[str, float]],
    cpu: dict[str, float],
    startup: dict[str, float],
    same: bool,
    vit_rate: float,
) -> dict[str, Any]:
    local, one, two = times["in-process"], times["ray-1"], times["ray-2"]
    per_stage = {
        s: {
            "in_process_s": local[s],
            "ray_1_cpu_s": one[s],
            "ray_2_cpu_s": two[s],
            "overhead_ray_1_cpu": round(one[s] / local[s] - 1, 3),
            "scaling_efficiency_2_cpu": round(one[s] / (2 * two[s]), 3),
            "rows_per_core_second": round(n / local[s], 1),
            "rows_per_cpu_second": round(n / cpu[s], 1),
        }
        for s in STAGES
    }
    total = {k: round(sum(v.values()), 2) for k, v in times.items()}
    return {
        "images": n,
        "rows_per_part": ROWS_PER_PART,
        "parts": -(-n // ROWS_PER_PART),
        "cpus_on_machine": os.cpu_count(),
        "ray_startup_s": startup,
        "stages": per_stage,
        "total_s": total,
        "overhead_ray_1_cpu": round(total["ray-1"] / total["in-process"] - 1, 3),
        "scaling_efficiency_2_cpu": round(total["ray-1"] / (2 * total["ray-2"]), 3),
        "artefacts_identical": same,
        "vit_b_32_images_per_cpu_second": round(vit_rate, 1),
        # CPU time, not wall time: on a shared machine the wall clock also counts other jobs
        "laion_5b_core_hours": {
            s: round(LAION_5B / per_stage[s]["rows_per_cpu_second"] / 3600) for s in STAGES
        }
        | {"embed_vit_b_32_forward": round(LAION_5B / vit_rate / 3600)},
    }


def _markdown(r: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {s} | {v['in_process_s']} | {v['ray_1_cpu_s']} | {v['ray_2_cpu_s']} | "
        f"{v['overhead_ray_1_cpu']:+.1%} | {v['scaling_efficiency_2_cpu']:.2f} | "
        f"{v['rows_per_core_second']} | {v['rows_per_cpu_second']} |"
        for s, v in r["stages"].items()
    )
    return f"""# Engines: in-process vs Ray (1 and 2 CPUs)

{r["images"]} openclipart images (`audit sample build --n {r["images"]}`), ingested in
{r["parts"]} parts of {r["rows_per_part"]} rows; each engine on its own copy. Machine:
{r["cpus_on_machine"]} CPUs, shared with other jobs, so read the ratios. Ray start-up (not in
the stage times): {json.dumps(r["ray_startup_s"])} s. Artefacts identical on every engine:
{r["artefacts_identical"]}.

| stage | in-process s | Ray 1 CPU s | Ray 2 CPU s | overhead (Ray 1 CPU) | scaling efficiency (2 CPU) | rows/s (wall) | rows per CPU-second |
|---|---|---|---|---|---|---|---|
{rows}

Totals: {json.dumps(r["total_s"])}; overhead {r["overhead_ray_1_cpu"]:+.1%} (goal <= 15%),
scaling efficiency {r["scaling_efficiency_2_cpu"]:.2f}.

ViT-B-32 image forward passes, one thread: {r["vit_b_32_images_per_cpu_second"]} per CPU-second
(the bundled tiny model's embed figure above is mostly decoding). Core-hours for LAION-5B (5.85
billion rows) at the per-CPU-second rates: {json.dumps(r["laion_5b_core_hours"])}.

Regenerate: `python -m audit.bench engines --out reports/bench` (part of `make bench`).
"""

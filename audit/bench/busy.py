"""Speed on a busy machine: training steps, faiss search and hashing, each quiet and beside
one competing CPU-bound process that this benchmark starts (and always ends), with the
libraries' own thread defaults and with audit's thread budget (`audit.threads`).

The OpenMP wait policy and the thread pools are fixed when torch and faiss load, so every
measurement runs in a fresh process (`python -m audit.bench.busy WORKLOAD MODE`) that times
its workload alone and prints JSON; imports and set-up are not timed.

    train   training steps of the demo's UNet (32x32, base 16, batch 32), after one warm-up step
    faiss   k=10 search of N pHash-like 64-bit codes against themselves (IndexBinaryFlat), and
            of N 64-d float vectors (IndexFlatIP): `audit index` / `audit dedup`'s kind of work
    hash    `audit hash` (all four hashes) over the bundled sample's 300 images

    defaults  what the libraries do alone: torch, faiss and BLAS take every core, OpenMP's
              default wait policy, and the hash pool's old fixed 2 workers
    budget    `threads.configure()` first: one budget from affinity and cgroup quota, passive
              OpenMP waiting, worker counts from the budget

The competitor is a pure-Python busy loop bounded by its own deadline (and killed by the
bench in any case): one core-bound process, on a 2-core machine the fair share explains at
most 2x. The ratio loaded / quiet is the figure; the goal is <= 2x with the budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORKLOADS = ("train", "faiss", "hash")
MODES = ("defaults", "budget")
BUSY = (
    "import sys, time\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass\n"
)
TIMEOUT_S = 600  # one measurement; the library defaults can collapse under load
SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample" / "shards"


def _train(quick: bool) -> dict[str, Any]:
    import torch
    from torch.nn import functional as F

    from audit.diffusion.model import ModelConfig, UNet
    from audit.diffusion.schedule import Schedule, ScheduleConfig

    torch.manual_seed(0)
    model = UNet(ModelConfig(resolution=32, base_channels=16, attention_resolution=8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = Schedule(ScheduleConfig())
    x = torch.rand(32, 3, 32, 32) * 2 - 1

    def step() -> None:
        t = torch.randint(0, schedule.T, (32,))
        noise = torch.randn_like(x)
        loss = F.mse_loss(model(schedule.q_sample(x, t, noise), t, None), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # allocations
    n = 2 if quick else 4
    started = time.perf_counter()
    for _ in range(n):
        step()
    return {"seconds": time.perf_counter() - started, "units": n, "unit": "steps"}


def _faiss(quick: bool) -> dict[str, Any]:
    import faiss
    import numpy as np

    n = 5_000 if quick else 20_000
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    vectors = rng.standard_normal((n, 64)).astype(np.float32)
    binary, flat = faiss.IndexBinaryFlat(64), faiss.IndexFlatIP(64)
    binary.add(codes)
    flat.add(vectors)
    started = time.perf_counter()
    binary.search(codes, 10)
    flat.search(vectors, 10)
    return {"seconds": time.perf_counter() - started, "units": n, "unit": "queries x 2 indexes"}


def _hash(quick: bool, mode: str) -> dict[str, Any]:
    from audit import hashes, metadata

    with tempfile.TemporaryDirectory(prefix="audit-bench-busy-") as tmp:
        ws = Path(tmp) / "ws"
        metadata.ingest(ws, [str(SAMPLE)])
        workers = 2 if mode == "defaults" else None  # None: the budget
        started = time.perf_counter()
        summary = hashes.compute(ws, workers=workers)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "units": summary["hashed"], "unit": "images"}


def worker(workload: str, mode: str, quick: bool) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    threads = None
    if mode == "budget":
        from audit import threads as budget

        threads = budget.configure()  # before torch or faiss load
    if workload == "train":
        result = _train(quick)
    elif workload == "faiss":
        result = _faiss(quick)
    else:
        result = _hash(quick, mode)
    return {**result, "workload": workload, "mode": mode, "threads": threads}


def _measure(workload: str, mode: str, quick: bool, competitor: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "AUDIT_THREADS"}
    env.update(AUDIT_NO_PROGRESS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    if mode == "defaults":  # what the libraries do when nobody sets a budget
        for var in (
            "OMP_WAIT_POLICY",
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
        ):
            env.pop(var, None)
    busy = None
    if competitor:
        busy = subprocess.Popen([sys.executable, "-c", BUSY, str(TIMEOUT_S + 60)])
    try:
        args = [sys.executable, "-m", "audit.bench.busy", workload, mode] + (
            ["--quick"] if quick else []
        )
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
        return json.loads(done.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"error": f"over {TIMEOUT_S} s"}
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def run(out: Path, quick: bool = False) -> dict[str, Any]:
    """Every workload x mode, quiet and loaded, alternating (best of 2 each); writes busy.json/md."""
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    for workload in WORKLOADS:
        for mode in MODES:
            times: dict[str, list[float]] = {"quiet": [], "loaded": []}
            errors = []
            for _ in range(2):
                for condition in ("quiet", "loaded"):
                    r = _measure(workload, mode, quick, competitor=condition == "loaded")
                    if "error" in r:
                        errors.append(f"{condition}: {r['error']}")
                    else:
                        times[condition].append(r["seconds"])
                        results.setdefault(workload, {}).setdefault("threads", {})[mode] = r[
                            "threads"
                        ]
            quiet, loaded = min(times["quiet"], default=None), min(times["loaded"], default=None)
            results.setdefault(workload, {})[mode] = {
                "quiet_s": quiet and round(quiet, 3),
                "loaded_s": loaded and round(loaded, 3),
                "ratio": round(loaded / quiet, 2) if quiet and loaded else None,
                "runs": {k: [round(v, 3) for v in vs] for k, vs in times.items()},
                "errors": errors,
            }
    result = {
        "benchmark": "busy",
        "quick": quick,
        "cpus_available": _available(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "goal": "budget ratio <= 2.0 with one competing core-bound process on 2 cores",
        "results": results,
    }
    (out / "busy.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "busy.md").write_text(_markdown(result))
    return result


def _available() -> int:
    from audit.threads import available_cpus

    return available_cpus()


def _markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Speed on a busy machine",
        "",
        f"{r['cpus_available']} CPUs available to the process; load average "
        f"{r['load_average_before'][0]} before and {r['load_average_after'][0]} after (other work "
        "on the machine is part of every figure; the competitor is one extra busy loop).",
        "",
        "| workload | mode | threads | quiet s | with one competing process s | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for workload, by_mode in r["results"].items():
        for mode in MODES:
            m = by_mode.get(mode, {})
            threads = by_mode.get("threads", {}).get(mode) or "library default"
            ratio = f"**{m['ratio']}x**" if mode == "budget" and m.get("ratio") else m.get("ratio")
            err = f" ({'; '.join(m['errors'])})" if m.get("errors") else ""
            lines.append(
                f"| {workload} | {mode} | {threads} | {m.get('quiet_s')} | {m.get('loaded_s')} | {ratio}{err} |"
            )
    lines += ["", f"Goal: {r['goal']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--quick"]
    if len(args) != 2 or args[0] not in WORKLOADS or args[1] not in MODES:
        sys.exit(
            f"usage: python -m audit.bench.busy {{{','.join(WORKLOADS)}}} {{{','.join(MODES)}}} [--quick]"
        )
    print(json.dumps(worker(args[0], args[1], "--quick" in sys.argv)))

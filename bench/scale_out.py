"""Scale-out and Prefect overhead: the Vaswani corpus through the `reindex` flow, default vs Dask task runner.

1. the raw SentenceTransformer `encode` of the corpus's distinct chunk texts: this machine's physical limit;
2. a full index through the Prefect flow `flows.reindex.reindex` with `service.task_runner: default`;
3. the same with `service.task_runner: dask` (a local cluster of `--workers` processes), fresh index folder;
   both must end with the same chunks, and the same vectors for a sample of them;
4. Prefect overhead: no-change re-index runs through the flow against direct `run_index` calls (as
   `ragloop index --direct` does), alternating, on the indexed corpus.

The flows talk to a temporary Prefect server (`prefect_test_harness`); imports, the server, MLflow and the
model are warmed on a 1-document deployment before any timing. The Dask side pays for its cluster and for
loading the model in every worker on each run: that is what a run with that runner costs.

The server keeps Prefect's default 512 KiB cap on flow-run parameters: the corpus's texts (3 MB) pass it only
while the Dask path hands them to tasks, never to a flow as parameters.

    .venv/bin/python bench/scale_out.py [--docs N (default: all 11,429)] [--workers 2] [--overhead-runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _common as c  # sets the offline environment before the project imports
import numpy as np
import psutil
from index_throughput import chunk_texts, vaswani_files

from components.config import Params, load_params
from components.knowledge.embedder import encode_batched
from components.knowledge.indexer import run_index
from components.knowledge.report import contract
from components.knowledge.session import open_index

VECTOR_SAMPLE = 500  # chunks whose vectors are compared between the two runners
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # else every worker start and stop is logged


def own_subprocess_cpu() -> float:
    """CPU seconds of this process's children (the Prefect server, Dask workers), live and already reaped:
    `c.Timer` counts them as other processes, which they are not."""
    live = 0.0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):  # it ended meanwhile
            live += sum(child.cpu_times()[:2])
    reaped = os.times()
    return live + reaped.children_user + reaped.children_system


def runner_deployment(folder: Path, files: dict[str, str], runner: str, workers: int) -> Params:
    """A temp deployment (own params.yaml, docs, index, MLflow store) whose `service` section picks the runner."""
    c.deployment(folder, files)
    with (folder / "params.yaml").open("a", encoding="utf-8") as f:
        f.write(f"service: {{task_runner: {runner}, dask_workers: {workers}}}\n")
    return load_params(folder / "params.yaml")


def raw_encode(folder: Path, texts: list[str]) -> tuple[float, float]:
    """The model alone on the same texts, same batching, warm (as index_throughput.py measures it):
    seconds and other processes' load meanwhile."""
    params = c.deployment(folder)
    with open_index(params) as s:
        model = c.warm_model(s, texts)
        c.wait_quiet()
        with c.Timer() as t:
            encode_batched(model, texts, params.embedder.batch_size, params.embedder.batch_tokens)
    c.log(f"raw encode: {t.seconds:.1f} s ({len(texts) / t.seconds:.1f} chunks/s)")
    return t.seconds, t.others


def full_flow_run(params: Params, runner: str, texts: list[str]) -> dict[str, Any]:
    """One full index through the flow; checks that every distinct chunk text was embedded and stored once."""
    from flows.reindex import reindex

    c.wait_quiet()
    c.log(f"full index through the flow, task runner {runner} ...")
    cpu0 = own_subprocess_cpu()
    with c.Timer() as t:
        report = reindex(params_file=str(params.source), reason=f"bench-{runner}")
    children = own_subprocess_cpu() - cpu0
    with open_index(params) as s:
        records = s.manifest.records_at(s.manifest.published())
    hashes = {r.chunk_hash for r in records}
    if report["chunks"]["embedded"] != len(texts) or len(hashes) != len(texts):
        raise SystemExit(
            f"{runner}: embedded {report['chunks']['embedded']}, stored {len(hashes)} distinct chunks,"
            f" the chunker gives {len(texts)}"
        )
    c.log(f"{runner}: {t.seconds:.1f} s, {len(records):,} chunks, embed step {report['embed_seconds']} s")
    return {
        "seconds": round(t.seconds, 3),
        "chunks": len(records),
        "chunks_per_s": round(len(texts) / t.seconds, 1),
        "embed_step_s": report["embed_seconds"],
        "index_in_flow_s": report["duration_s"],
        "flow_steps_after_index_s": round(t.seconds - report["duration_s"], 3),
        "subprocess_cpu_s": round(children, 1),  # the Prefect server, and on Dask its workers
        "others_load": round(max(0.0, t.others - children / (t.seconds * (os.cpu_count() or 1))), 3),
        "report": {k: report[k] for k in ("documents", "chunks", "detect_seconds", "publish_seconds")},
    }


def vectors_by_hash(params: Params, hashes: list[str]) -> dict[str, np.ndarray]:
    with open_index(params) as s:
        records = {r.chunk_hash: r for r in s.manifest.records_at(s.manifest.published())}
        coll = s.collection(records[hashes[0]].collection)
        got = s.store.embeddings(coll, [records[h].id for h in hashes])
        return {h: got[records[h].id] for h in hashes}


def compare_vectors(a: Params, b: Params) -> float:
    """Smallest cosine similarity between the two runners' vectors of the same chunk texts (sampled)."""
    with open_index(a) as s:
        hashes = sorted({r.chunk_hash for r in s.manifest.records_at(s.manifest.published())})
    sample = random.Random(0).sample(hashes, min(VECTOR_SAMPLE, len(hashes)))
    va, vb = vectors_by_hash(a, sample), vectors_by_hash(b, sample)
    return float(min(np.dot(va[h], vb[h]) for h in sample))


def overhead(params: Params, runs: int) -> dict[str, Any]:
    """No-change re-index: the flow against the direct component call, alternating which goes first."""
    from flows.reindex import reindex

    times: dict[str, list[float]] = {"flow": [], "direct": []}
    for i in range(runs):
        for side in ("flow", "direct") if i % 2 == 0 else ("direct", "flow"):
            c.wait_quiet()
            with c.Timer() as t:
                if side == "flow":
                    report = reindex(params_file=str(params.source), reason="bench-no-change")
                else:
                    with open_index(params) as s:
                        report = contract(run_index(s))
            if report["published"] or report["chunks"]["embedded"]:
                raise SystemExit(f"a no-change {side} run published or embedded something")
            times[side].append(t.seconds)
    flow, direct = c.median(times["flow"]), c.median(times["direct"])
    return {
        "runs": runs,
        "flow_median_s": round(flow, 4),
        "direct_median_s": round(direct, 4),
        "overhead_per_run_s": round(flow - direct, 4),
        "ratio": round(flow / direct, 2),
        "flow_all_s": [round(x, 4) for x in times["flow"]],
        "direct_all_s": [round(x, 4) for x in times["direct"]],
        "mlflow_record_median_s": _mlflow_record_cost(params, runs),
    }


def _mlflow_record_cost(params: Params, runs: int) -> float:
    """The flow's `record` step alone (one MLflow run per index run), to split the overhead."""
    from components.config import Settings
    from components.knowledge.report import to_markdown
    from components.tracking.mlflow_runs import log_index_run

    with open_index(params) as s:
        report = run_index(s)
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        log_index_run(params, Settings.from_env(), report, to_markdown(report), "bench-record-only")
        seconds.append(time.perf_counter() - t0)
    return round(c.median(seconds), 4)


def warm_flow(folder: Path) -> float:
    """Imports, the Prefect server's first flow run, MLflow's first store and the model: outside any timing."""
    from flows.reindex import reindex

    t0 = time.perf_counter()
    c.warm_process(folder / "warm-direct")
    params = runner_deployment(folder / "warm-flow", {"warm.md": "# Warm-up\n\nOne small document."}, "default", 1)
    reindex(params_file=str(params.source), reason="bench-warm-up")
    return time.perf_counter() - t0


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from prefect.testing.utilities import prefect_test_harness

    files = vaswani_files(args.docs)
    texts = chunk_texts(files, c.deployment(work / "chunker"))
    c.log(f"{len(files):,} Vaswani abstracts, {len(texts):,} distinct chunk texts")
    with prefect_test_harness(server_startup_timeout=120):
        c.log(f"warm-up (imports, Prefect server, MLflow, model): {warm_flow(work):.1f} s")
        raw_runs = [raw_encode(work / "raw-before", texts)]
        deployments = {r: runner_deployment(work / r, files, r, args.workers) for r in ("default", "dask")}
        full = {r: full_flow_run(p, r, texts) for r, p in deployments.items()}
        if full["default"]["chunks"] != full["dask"]["chunks"]:
            raise SystemExit(f"chunk counts differ: {full['default']['chunks']} vs {full['dask']['chunks']}")
        min_cos = compare_vectors(deployments["default"], deployments["dask"])
        c.log(f"same {full['dask']['chunks']:,} chunks in both; min cosine of sampled vectors {min_cos:.6f}")
        over = overhead(deployments["default"], args.overhead_runs)
        raw_runs.append(raw_encode(work / "raw-after", texts))
    best = min(x[0] for x in raw_runs)  # best of 2 (before and after the flows): interference only adds time
    raw = {
        "seconds": round(best, 3),
        "chunks_per_s": round(len(texts) / best, 1),
        "seconds_all": [round(x[0], 3) for x in raw_runs],
        "others_load": [x[1] for x in raw_runs],
    }
    for f in full.values():
        f["ratio_to_raw"] = round(raw["seconds"] / f["seconds"], 3)
    return {
        "documents": len(files),
        "chunks": len(texts),
        "raw": raw,
        "full": full,
        "min_cosine_default_vs_dask": round(min_cos, 6),
        "no_change_overhead": over,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=None, help="first N Vaswani abstracts (default: all)")
    ap.add_argument("--workers", type=int, default=2, help="Dask local-cluster workers")
    ap.add_argument("--overhead-runs", type=int, default=5, help="no-change runs on each side")
    args = ap.parse_args()
    load_at_start = os.getloadavg()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    with c.workdir("scale-out") as work:
        os.environ["PREFECT_HOME"] = str(work / ".prefect")  # before prefect is first imported
        out = run(args, work)
    raw, full, over = out["raw"], out["full"], out["no_change_overhead"]
    rows = [["raw encode (physical limit)", out["chunks"], raw["seconds"], raw["chunks_per_s"], 1.0, "-"]]
    rows += [
        [
            f"flow, task runner {r}" + (f" ({args.workers} workers)" if r == "dask" else ""),
            f["chunks"],
            f["seconds"],
            f["chunks_per_s"],
            f["ratio_to_raw"],
            f["embed_step_s"],
        ]
        for r, f in full.items()
    ]
    print(f"\nfull index of {out['documents']:,} Vaswani abstracts")
    print(c.table(["run", "chunks", "seconds", "chunks/s", "raw/run", "embed step s"], rows))
    print(f"\nno-change re-index, median of {over['runs']} each")
    print(
        c.table(
            ["path", "median s"],
            [["flow `reindex`", over["flow_median_s"]], ["direct `run_index`", over["direct_median_s"]]],
        )
    )
    print(
        f"Prefect overhead per run: {over['overhead_per_run_s']:.3f} s (flow/direct {over['ratio']}x); "
        f"of it, the MLflow record step alone: {over['mlflow_record_median_s']:.3f} s"
    )
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in load_at_start)}")
    import dask

    environ = dask.config.get("distributed.nanny.pre-spawn-environ")  # OMP_NUM_THREADS=1: 1 torch thread a worker
    load = [round(x, 2) for x in load_at_start]
    c.save(
        "scale_out",
        {
            "started": started,
            "load_average_at_start": load,
            "dask_workers": args.workers,
            "dask_worker_environ": environ,
            **out,
        },
    )


if __name__ == "__main__":
    main()

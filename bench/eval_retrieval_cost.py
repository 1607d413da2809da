"""What measuring retrieval on ~100 labelled queries costs: `ragloop eval-retrieval FILE` (one process, every query
embedded in one batch) against `ragloop query` once per query, both timed as whole commands (a fresh process:
imports, model load, the work, exit), as a user runs them.

The deployment: the 48 XQuAD articles (one file each) indexed once with `ragloop index --direct`; the queries: the
97 long multi-question requests of bench/long_queries.py (`xquad-articles` / `long`, the articles relevant), as a
JSONL file. `ragloop query` is timed on the first `--query-calls` requests and reported per call.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python bench/eval_retrieval_cost.py [--repeats 3 --query-calls 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as c
from long_queries import xquad_articles, xquad_long

RAGLOOP = str(Path(sys.executable).with_name("ragloop"))


def timed(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--query-calls", type=int, default=5)
    args = ap.parse_args()
    files, questions = xquad_articles()
    queries, qrels = xquad_long(questions, seed=14)
    with c.workdir("eval-cost") as work:
        c.deployment(work, files)
        timed([RAGLOOP, "index", "--direct"], work)
        path = work / "queries.jsonl"
        path.write_text("".join(json.dumps({"id": q, "query": queries[q], "relevant": sorted(qrels[q])}) + "\n"
                                for q in sorted(queries)))  # fmt: skip
        evals: list[float] = []
        result: dict[str, Any] = {}
        for _ in range(args.repeats):
            seconds, done = timed([RAGLOOP, "eval-retrieval", str(path), "--json"], work)
            evals.append(seconds)
            result = json.loads(done.stdout)
            c.log(f"eval-retrieval: {seconds:.1f} s for {result['queries']} queries")
        calls: list[float] = []
        for q in sorted(queries)[: args.query_calls]:
            seconds, _ = timed([RAGLOOP, "query", queries[q], "-k", "10", "--json"], work)
            calls.append(seconds)
            c.log(f"query: {seconds:.1f} s")
    per_query = c.median(evals) / result["queries"]
    summary = {
        "queries": result["queries"],
        "eval_retrieval_s": [round(x, 2) for x in evals],
        "eval_retrieval_median_s": round(c.median(evals), 2),
        "eval_retrieval_per_query_s": round(per_query, 3),
        "eval_inside": result["seconds"],
        "query_call_s": [round(x, 2) for x in calls],
        "query_call_median_s": round(c.median(calls), 2),
        "speed_up_per_query": round(c.median(calls) / per_query, 1),
        "metrics": result["metrics"],
        "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
    }
    rows = [["eval-retrieval, whole command (median)", summary["eval_retrieval_median_s"]],
            ["  per query", summary["eval_retrieval_per_query_s"]],
            ["ragloop query, whole command per call (median)", summary["query_call_median_s"]]]  # fmt: skip
    print(c.table(["what", "seconds"], rows))
    c.save("eval_retrieval_cost", summary)


if __name__ == "__main__":
    main()

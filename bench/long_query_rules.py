"""Which queries to rank sentence by sentence (`retrieval.long_query: sentences`): rules measured on the sample gate
set (short messages, a greeting then the question) and on bench/long_queries.py's long request sets.

* gate: data/behaviour/gate.jsonl's in-scope cases through the real Retriever on the published data/docs index
  (params.yaml; `ragloop index --direct --params params.yaml` builds it): chunk recall@1 (the prompt shows the
  rank-1 chunk, `generator.context_chunks: 1`) and @3 of the gold documents.
* xquad-articles (requests, long), vaswani (short, requests; first --vaswani N abstracts), xquad (short): as
  bench/long_queries.py builds them, document level (the defaults), recall@5/@10, MRR, nDCG@10.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python bench/long_query_rules.py --sets gate,xquad-articles,vaswani
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import _common as c  # sets the offline environment before the project imports
import torch
from long_queries import KS, corpus_sets, doc_metrics

from components.config import RetrievalParams, load_params
from components.knowledge.indexer import run_index
from components.knowledge.retrieval import Retriever
from components.knowledge.session import open_index

RULES = {  # name -> retrieval settings over the defaults
    "split (whole query unless over the window)": {"long_query": "split"},
    "sentences (every sentence apart)": {"long_query": "sentences", "sentences_min": 1, "sentences_whole": False},
    "sentences from 3 sentences": {"long_query": "sentences", "sentences_min": 3, "sentences_whole": False},
    "sentences + whole (max)": {"long_query": "sentences", "sentences_min": 1, "sentences_whole": True},
}


def gate(rules: dict[str, dict[str, Any]]) -> dict[str, Any]:
    params = load_params(c.ROOT / "params.yaml")
    cases = [json.loads(x) for x in (c.ROOT / "data/behaviour/gate.jsonl").read_text().splitlines() if x.strip()]
    cases = [x for x in cases if x.get("gold_docs")]
    out: dict[str, Any] = {"cases": len(cases), "rules": {}}
    firsts: dict[str, list[str]] = {}
    for name, settings in rules.items():
        p = params.model_copy(update={"retrieval": params.retrieval.model_copy(update=settings)})
        t0 = time.perf_counter()
        with Retriever(p) as r:
            hits = r.search([x["question"] for x in cases], 3)
        seconds = time.perf_counter() - t0
        at = {k: sum(any(h["doc"] in x["gold_docs"] for h in found[:k]) for x, found in zip(cases, hits, strict=True))
              for k in (1, 3)}  # fmt: skip
        firsts[name] = [found[0]["chunk_id"] + found[0]["doc"] if found else "" for found in hits]
        out["rules"][name] = {"hits@1": at[1], "recall@1": round(at[1] / len(cases), 3), "hits@3": at[3],
                              "recall@3": round(at[3] / len(cases), 3), "seconds": round(seconds, 1)}  # fmt: skip
        c.log(f"gate {name}: {out['rules'][name]}")
    base = firsts.get("split (whole query unless over the window)")
    for name, top in firsts.items():
        if base is not None:
            out["rules"][name]["rank1_changed_vs_split"] = sum(a != b for a, b in zip(top, base, strict=True))
    return out


def corpus(name: str, rules: dict[str, dict[str, Any]], vaswani_limit: int) -> dict[str, Any]:
    files, sets = corpus_sets(name, vaswani_limit)
    with c.workdir(f"long-query-rules-{name}") as work:
        params = c.deployment(work / "ragloop", files)
        with open_index(params) as s:
            run_index(s)
        out: dict[str, Any] = {"documents": len(files), "sets": {}}
        tops: dict[str, list[list[str]]] = {}
        for set_name, (queries, qrels) in sets.items():
            ids = sorted(queries)
            res: dict[str, Any] = {"queries": len(ids), "rules": {}}
            for rule, settings in rules.items():
                p = params.model_copy(update={"retrieval": RetrievalParams(**settings)})
                t0 = time.perf_counter()
                with Retriever(p) as r:
                    ranked = [[h["doc"] for h in hits] for hits in r.search_docs([queries[q] for q in ids], max(KS))]
                metrics = doc_metrics(ids, ranked, qrels)
                seconds = round(time.perf_counter() - t0, 2)
                base = tops.setdefault(set_name, ranked) if rule.startswith("split") else tops.get(set_name)
                changed = None if base is None else sum(a != b for a, b in zip(ranked, base, strict=True))
                res["rules"][rule] = {**metrics, "query_seconds": seconds, "top10_changed_vs_split": changed}
                c.log(f"  {name}/{set_name} {rule}: {metrics} (changed vs split: {changed}, {seconds} s)")
            out["sets"][set_name] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="gate,xquad-articles,vaswani")
    ap.add_argument("--rules", default=",".join(RULES), help="names from RULES, comma-separated")
    ap.add_argument("--vaswani", type=int, default=2000)
    ap.add_argument("--out", default="long_query_rules")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rules = {k: RULES[k] for k in args.rules.split(",")}
    path = c.RESULTS / f"{args.out}.json"
    results: dict[str, Any] = json.loads(path.read_text())["sets"] if path.is_file() else {}
    for name in args.sets.split(","):
        got = gate(rules) if name == "gate" else corpus(name, rules, args.vaswani)
        prev = results.get(name, {})
        if name == "gate":
            prev.setdefault("rules", {}).update(got["rules"])
            prev["cases"] = got["cases"]
        else:
            prev["documents"] = got["documents"]
            for s, res in got["sets"].items():
                prev.setdefault("sets", {}).setdefault(s, {"queries": res["queries"], "rules": {}})["rules"].update(
                    res["rules"]
                )
        results[name] = prev
        c.save(args.out, {"torch_threads": torch.get_num_threads(), "vaswani_abstracts": args.vaswani,
                          "omp_threads": os.environ.get("OMP_NUM_THREADS"), "sets": results})  # fmt: skip


if __name__ == "__main__":
    main()

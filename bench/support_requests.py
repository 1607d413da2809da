"""Long support requests over short titled documents (issue 20): ragloop with chunks embedded alone
(`chunking.embed_title: false`, the behaviour before) and with their document's title and section headings
(`true`), against whole-document dense MiniLM, BM25, LangChain and LlamaIndex, in one run.

Sets (bench/support_set.py builds the requests; the documents are read from the shared data by path):

* `northwind`: the sample deployment's 55 documents (data/docs) and bench/data/support_requests/northwind.jsonl
  (`requests`: persona, conditions, seed questions) and northwind_situations.jsonl (`situations`: persona and real
  banking77 messages);
  its gate set too: chunk hit@1 (the context the generator sees, `generator.context_chunks: 1`) and hit@3 of the
  gold document over the in-scope gate questions, with the defaults.
* `xquad-policies`: 240 short titled pages built from XQuAD and bench/data/support_requests/xquad_policies.jsonl.
* `xquad`, `xquad-articles`, `vaswani`: bench/long_queries.py's corpora and sets (untitled plain text: no heading
  to embed, so both settings must give the same figures; measured, not assumed). `--vaswani N`: the first N
  abstracts only (the full 11,429 take most of an hour on one core).

Every ragloop variant runs twice, titles off and on, each on its own index (the setting is part of the index key).
Diagnosis variants: `truncate` (the whole request as one embedding, the behaviour before issue 14), `dense` and
BM25 alone, and chunk-level ranking (the 30 best chunks mapped to documents). Metrics as bench/long_queries.py.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python bench/support_requests.py [--corpora northwind,xquad-policies]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as c  # sets the offline environment before the project imports
import numpy as np
import support_set
import torch
from head_to_head import load_model
from long_queries import CHUNKS, KS, corpus_sets, doc_metrics, whole_document_dense

from components.config import ChunkingParams, Params, RetrievalParams
from components.knowledge.chunking import chunk_document
from components.knowledge.documents import parse_document
from components.knowledge.indexer import run_index
from components.knowledge.retrieval import Retriever
from components.knowledge.session import open_index

Queries = dict[str, str]
Qrels = dict[str, set[str]]
VARIANTS = {  # name -> (retrieval settings over the defaults, level)
    "defaults (hybrid, doc max, sentences + whole)": ({}, "doc"),
    "dense (doc max, sentences + whole)": ({"mode": "dense"}, "doc"),
    "whole request (truncate), hybrid": ({"long_query": "truncate"}, "doc"),
    "whole request (truncate), dense": ({"long_query": "truncate", "mode": "dense"}, "doc"),
    "chunks (hybrid, whole request, 30 chunks)": ({"long_query": "truncate"}, "chunk"),
    "BM25 (doc level)": ({"mode": "lexical"}, "doc"),
}
PLAIN_VARIANTS = ("defaults (hybrid, doc max, sentences + whole)", "BM25 (doc level)")  # untitled corpora
WHOLE = "whole-document dense (MiniLM, cosine)"


def northwind() -> tuple[dict[str, str], dict[str, tuple[Queries, Qrels]]]:
    """The sample documents as the product parses them (what whole-document dense and the peers read)."""
    docs = c.ROOT / "data" / "docs"
    files = {}
    for path in sorted(p for p in docs.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = path.relative_to(docs).as_posix()
        files[rel] = parse_document(rel, path.read_bytes()).text
    return files, {"requests": requests_file("northwind"), "situations": requests_file("northwind_situations")}


def xquad_policies() -> tuple[dict[str, str], dict[str, tuple[Queries, Qrels]]]:
    return support_set.xquad_policy_pages(), {"requests": requests_file("xquad_policies")}


def requests_file(name: str) -> tuple[Queries, Qrels]:
    rows = [json.loads(x) for x in (support_set.OUT / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    return {r["id"]: r["query"] for r in rows}, {r["id"]: set(r["relevant"]) for r in rows}


def sets_of(name: str, vaswani_limit: int) -> tuple[dict[str, str], dict[str, tuple[Queries, Qrels]]]:
    if name == "northwind":
        return northwind()
    if name == "xquad-policies":
        return xquad_policies()
    return corpus_sets(name, vaswani_limit)


def index(name: str, files: dict[str, str], work: Path, titles: bool) -> tuple[Params, dict[str, Any]]:
    """A deployment of the corpus with `chunking.embed_title = titles`, indexed; the Northwind one holds the
    original files (HTML, PDF), the others the texts."""
    folder = work / f"{name}-titles-{'on' if titles else 'off'}"
    params = c.deployment(folder, {} if name == "northwind" else files)
    if name == "northwind":
        shutil.rmtree(params.paths.docs)
        shutil.copytree(c.ROOT / "data" / "docs", params.paths.docs)
    params = params.model_copy(update={"chunking": params.chunking.model_copy(update={"embed_title": titles})})
    t0 = time.perf_counter()
    with open_index(params) as s:
        report = run_index(s)
    seconds = time.perf_counter() - t0
    stats = {"chunks": report["chunks"]["total"], "index_seconds": round(seconds, 1),
             "embed_seconds": report["embed_seconds"]}  # fmt: skip
    c.log(f"{name} titles {'on' if titles else 'off'}: {stats}")
    return params, stats


def ragloop(params: Params, settings: dict[str, Any], level: str) -> Callable[[list[str]], list[list[str]]]:
    def run(queries: list[str]) -> list[list[str]]:
        with Retriever(params.model_copy(update={"retrieval": RetrievalParams(**settings)})) as r:
            if level == "doc":
                return [[h["doc"] for h in hits] for hits in r.search_docs(queries, max(KS))]
            return [list(dict.fromkeys(h["doc"] for h in hits)) for hits in r.search(queries, CHUNKS)]

    return run


def title_loss(files: dict[str, str], chunking: ChunkingParams) -> dict[str, Any]:
    """How many chunks lose their document's title: chunks of a titled document (a level-1 heading) whose text
    does not hold it; and their share among the chunks of titled documents."""
    titled = lost = 0
    for rel, text in files.items():
        title = next((line for line in text.splitlines() if line.startswith("# ")), None)
        if title is None:
            continue
        for ch in chunk_document(rel, text, chunking):
            titled += 1
            lost += title not in ch.text
    return {"chunks_of_titled_docs": titled, "without_title": lost, "share": round(lost / titled, 3) if titled else 0}


def gate(params: Params) -> dict[str, Any]:
    """The sample gate set's in-scope questions through the defaults: the rank-1 chunk is the context."""
    rows = [json.loads(x) for x in (c.ROOT / "data/behaviour/gate.jsonl").read_text().splitlines() if x.strip()]
    cases = [x for x in rows if x.get("gold_docs")]
    with Retriever(params) as r:
        hits = r.search([x["question"] for x in cases], 3)
    at = {k: sum(any(h["doc"] in x["gold_docs"] for h in found[:k]) for x, found in zip(cases, hits, strict=True))
          for k in (1, 3)}  # fmt: skip
    return {"cases": len(cases), "hits@1": at[1], "hit@1": round(at[1] / len(cases), 3), "hits@3": at[3],
            "hit@3": round(at[3] / len(cases), 3)}  # fmt: skip


def evaluate(name: str, work: Path, model: Any, peers: bool, vaswani_limit: int) -> dict[str, Any]:
    files, sets = sets_of(name, vaswani_limit)
    plain = name not in ("northwind", "xquad-policies")
    c.log(f"{name}: {len(files)} documents; sets {', '.join(f'{k} ({len(v[0])})' for k, v in sets.items())}")
    out: dict[str, Any] = {"documents": len(files), "peers": peers, "index": {}, "sets": {}}
    out["title_loss"] = title_loss(files, ChunkingParams(embed_title=False))
    systems: dict[str, Callable[[list[str]], list[list[str]]]] = {}
    deployments = {}
    for titles in (False, True):
        label = f"titles {'on' if titles else 'off'}"
        params, out["index"][label] = deployments[titles] = index(name, files, work, titles)
        if name == "northwind":
            out[f"gate {label}"] = gate(params)
            c.log(f"gate {label}: {out[f'gate {label}']}")
        for variant in PLAIN_VARIANTS if plain else VARIANTS:
            systems[f"ragloop {variant}, {label}"] = ragloop(params, *VARIANTS[variant])
    systems[WHOLE] = whole_document_dense(files, model, deployments[False][0])  # reuses single-chunk vectors
    if peers:
        from retrieval_quality import langchain, llamaindex

        systems["LangChain (Chroma.as_retriever)"] = langchain(files, work / name, model)
        systems["LlamaIndex (VectorStoreIndex.as_retriever)"] = llamaindex(files, work / name)
    for set_name, (queries, qrels) in sets.items():
        ids = sorted(queries)
        lengths = [len(model.tokenizer(queries[q], verbose=False)["input_ids"]) for q in ids]
        res: dict[str, Any] = {"queries": len(ids), "relevant_per_query": round(float(np.mean([len(qrels[q])
                               for q in ids])), 2), "tokens_median": int(np.median(lengths)),
                               "tokens_max": int(max(lengths)), "example": queries[ids[0]], "systems": {}}  # fmt: skip
        found: dict[str, list[float]] = {}
        for system, run in systems.items():
            t0 = time.perf_counter()
            ranked = run([queries[q] for q in ids])
            metrics = doc_metrics(ids, ranked, qrels)
            found[system] = [
                len(qrels[q] & set(docs[:10])) / len(qrels[q]) for q, docs in zip(ids, ranked, strict=True)
            ]
            res["systems"][system] = {**metrics, "query_seconds": round(time.perf_counter() - t0, 2)}
            c.log(f"  {name}/{set_name} {system}: {metrics}")
        for system, recalls in found.items():  # requests where the system finds more / fewer than whole documents
            res["systems"][system]["r10_vs_whole_document"] = {
                "more": sum(a > b for a, b in zip(recalls, found[WHOLE], strict=True)),
                "fewer": sum(a < b for a, b in zip(recalls, found[WHOLE], strict=True)),
            }
        out["sets"][set_name] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpora", default="northwind,xquad-policies,xquad,xquad-articles,vaswani")
    ap.add_argument("--vaswani", type=int, default=2000, help="the first N abstracts (0: all 11,429)")
    ap.add_argument("--peers", default="northwind,xquad-policies", help="corpora that also run LangChain, LlamaIndex")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model()
    path = c.RESULTS / "support_requests.json"
    results: dict[str, Any] = json.loads(path.read_text())["corpora"] if path.is_file() else {}
    with c.workdir("support-requests") as work:
        for name in args.corpora.split(","):
            results[name] = evaluate(name, work, model, name in args.peers.split(","), args.vaswani)
            c.save("support_requests", {"ragloop_retrieval_defaults": RetrievalParams().model_dump(),
                                        "torch_threads": torch.get_num_threads(), "vaswani_abstracts": args.vaswani,
                                        "corpora": results})  # fmt: skip
    for name, res in results.items():
        for set_name, s in res["sets"].items():
            metrics = ["recall@5", "recall@10", "mrr", "ndcg@10"]
            rows = [[system, *(v[m] for m in metrics)] for system, v in s["systems"].items()]
            print(f"\n{name} / {set_name} ({res['documents']} documents, {s['queries']} queries)\n"
                  + c.table(["system", *metrics], rows))  # fmt: skip


if __name__ == "__main__":
    main()

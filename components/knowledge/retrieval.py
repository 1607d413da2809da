"""Read the published index: what `ragloop query` and the assistant see. Takes no lock and never sees a
version that is not fully published (records are filtered by the published version's interval)."""

from __future__ import annotations

from components.config import Params, Settings
from components.knowledge.embedder import Embedder
from components.knowledge.manifest import Manifest, VersionInfo
from components.knowledge.store import Store, StoredRecord


class IndexNotReadyError(RuntimeError):
    """No index version has been published yet."""


def query_index(params: Params, text: str, k: int = 5, settings: Settings | None = None) -> list[dict]:
    """The k best chunks of the published version: [{"doc", "chunk_id", "score", "text"}], best first."""
    manifest = Manifest(params.paths.index / "manifest.sqlite")
    try:
        published = manifest.published()
        info = manifest.version(published)
        if info is None:
            raise IndexNotReadyError(f"no index published under {params.paths.index}: run `ragloop index` first")
        hits = _search(params, info, published, text, k, settings)
        texts = manifest.texts({rec.metadata["chunk_hash"] for rec, _ in hits})
    finally:
        manifest.close()
    return [
        {"doc": rec.metadata["doc"], "chunk_id": rec.metadata["chunk_id"], "score": round(score, 6),
         "text": texts.get(rec.metadata["chunk_hash"], "")}
        for rec, score in hits
    ]  # fmt: skip


def _search(params: Params, info: VersionInfo, published: int, text: str, k: int, settings: Settings | None
            ) -> list[tuple[StoredRecord, float]]:  # fmt: skip
    model, _, revision = info.embedder.rpartition("@")
    embedder_params = params.embedder.model_copy(
        update={"model": model, "revision": None if revision.startswith("sha256:") else revision}
    )
    vector = Embedder(embedder_params, info.embedder).encode([text])[0]
    store = Store(params.paths.index, settings or Settings.from_env())
    try:
        return store.query(store.collection(info.collection), vector, k, published)
    finally:
        store.close()

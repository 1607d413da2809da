"""Read the published index: what `ragloop query` and the assistant see. Takes no lock and never sees a
version that is not fully published (records are filtered by the published version's interval)."""

from __future__ import annotations

from components.config import Params, Settings
from components.knowledge.embedder import Embedder
from components.knowledge.manifest import Manifest
from components.knowledge.store import Store


class IndexNotReadyError(RuntimeError):
    """No index version has been published yet."""


def query_index(params: Params, text: str, k: int = 5, settings: Settings | None = None) -> list[dict]:
    """The k best chunks of the published version: [{"doc", "chunk_id", "score", "text"}], best first."""
    manifest = Manifest(params.paths.index / "manifest.sqlite")
    try:
        published = manifest.published()
        info = manifest.version(published)
    finally:
        manifest.close()
    if info is None:
        raise IndexNotReadyError(f"no index published under {params.paths.index}: run `ragloop index` first")
    model, _, revision = info.embedder.rpartition("@")
    embedder_params = params.embedder.model_copy(
        update={"model": model, "revision": None if revision.startswith("sha256:") else revision}
    )
    vector = Embedder(embedder_params, info.embedder).encode([text])[0]
    store = Store(params.paths.index, settings or Settings.from_env())
    try:
        hits = store.query(store.collection(info.collection), vector, k, published)
    finally:
        store.close()
    return [
        {
            "doc": rec.metadata["doc"],
            "chunk_id": rec.metadata["chunk_id"],
            "score": round(score, 6),
            "text": rec.text or "",
        }
        for rec, score in hits
    ]

"""Read the published index: what `ragloop query` and the assistant see. Takes no lock and never sees a
version that is not fully published (records are filtered by the published version's interval)."""

from __future__ import annotations

from types import TracebackType

from components.config import Params, Settings
from components.knowledge.embedder import Embedder
from components.knowledge.manifest import Manifest
from components.knowledge.store import Store


class IndexNotReadyError(RuntimeError):
    """No index version has been published yet."""


class Retriever:
    """The published version, opened once for many queries (an evaluation asks hundreds)."""

    def __init__(self, params: Params, settings: Settings | None = None) -> None:
        self.manifest = Manifest(params.paths.index / "manifest.sqlite")
        self.version = self.manifest.published()
        info = self.manifest.version(self.version)
        if info is None:
            self.manifest.close()
            raise IndexNotReadyError(f"no index published under {params.paths.index}: run `ragloop index` first")
        model, _, revision = info.embedder.rpartition("@")
        embedder_params = params.embedder.model_copy(
            update={"model": model, "revision": None if revision.startswith("sha256:") else revision}
        )
        self.embedder = Embedder(embedder_params, info.embedder)
        self.store = Store(params.paths.index, settings or Settings.from_env())
        self.collection = self.store.collection(info.collection)

    def search(self, texts: list[str], k: int) -> list[list[dict]]:
        """For each text, the k best chunks: [{"doc", "chunk_id", "score", "text"}], best first."""
        vectors = self.embedder.encode(texts)
        hits = [self.store.query(self.collection, v, k, self.version) for v in vectors]
        chunk_texts = self.manifest.texts({rec.metadata["chunk_hash"] for per in hits for rec, _ in per})
        return [
            [{"doc": rec.metadata["doc"], "chunk_id": rec.metadata["chunk_id"], "score": round(score, 6),
              "text": chunk_texts.get(rec.metadata["chunk_hash"], "")} for rec, score in per]
            for per in hits
        ]  # fmt: skip

    def stale_docs(self) -> set[str]:
        """Documents of the published version whose last parse failed (their chunks are an old text)."""
        return {path for path, row in self.manifest.docs_at(self.version).items() if row.stale}

    def close(self) -> None:
        self.store.close()
        self.manifest.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def query_index(params: Params, text: str, k: int = 5, settings: Settings | None = None) -> list[dict]:
    """The k best chunks of the published version for one text."""
    with Retriever(params, settings) as retriever:
        return retriever.search([text], k)[0]

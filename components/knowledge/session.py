"""An open index: the run lock, the manifest, the Chroma store and the identities that key the collection."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from components.config import Params, Settings
from components.knowledge.chunking import chunker_identity
from components.knowledge.embedder import Embedder, embedder_identity
from components.knowledge.manifest import Manifest, manifest_path
from components.knowledge.retriever_pointer import effective_params
from components.knowledge.store import RagloopEmbedding, Store

PUBLISHED_MARKER = "published.json"  # in the index folder: {index_version, collection, embedder, chunker}


@dataclass
class IndexSession:
    params: Params
    settings: Settings
    manifest: Manifest
    embedder_id: str
    chunker_id: str
    _store: Store | None = field(default=None, repr=False)
    _embedder: Embedder | None = field(default=None, repr=False)

    @property
    def docs_root(self) -> Path:
        return self.params.paths.docs

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.params.paths.index, self.settings)
        return self._store

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.params.embedder, self.embedder_id)
        return self._embedder

    def embedding_function(self) -> RagloopEmbedding:
        e = self.params.embedder
        return RagloopEmbedding(e.model, self.embedder_id, e.batch_size, e.device, e.batch_tokens)

    def collection(self, name: str) -> Any:
        return self.store.collection(name, self.embedding_function())

    @property
    def index_key(self) -> str:
        return hashlib.sha256(f"{self.embedder_id}\0{self.chunker_id}".encode()).hexdigest()[:10]

    def target_collection(self) -> str:
        """The collection for the current embedder + chunker: the published one if its key matches, else a
        retained one with that key (its vectors are reused), else a new deterministic name."""
        info = self.manifest.version(self.manifest.published())
        if info and (info.embedder, info.chunker) == (self.embedder_id, self.chunker_id):
            return info.collection
        prefix = f"{self.params.index.collection}-{self.index_key}-"
        known = [n for n in self.manifest.known_collections() if n.startswith(prefix)]
        return max(known, key=generation) if known else f"{prefix}0"


def generation(collection: str) -> int:
    """Collections are named PREFIX-KEY-GEN; compaction copies into GEN+1."""
    return int(collection.rsplit("-", 1)[1])


def next_generation(collection: str) -> str:
    return f"{collection.rsplit('-', 1)[0]}-{generation(collection) + 1}"


@contextmanager
def open_index(params: Params, settings: Settings | None = None, *, lock: bool = True) -> Iterator[IndexSession]:
    """Hold the index for one run. The lock is an flock: a killed run releases it with its process. The embedder is
    the champion retriever's when one was promoted (retriever_pointer.py), else params.yaml's."""
    params = effective_params(params)
    index_dir = params.paths.index
    index_dir.mkdir(parents=True, exist_ok=True)
    handle = _lock(index_dir / ".lock") if lock else None
    manifest = Manifest(manifest_path(index_dir))
    session: IndexSession | None = None
    try:
        session = IndexSession(
            params=params,
            settings=settings or Settings.from_env(),
            manifest=manifest,
            embedder_id=embedder_identity(params.embedder, index_dir / "embedder-hash-cache.json"),
            chunker_id=chunker_identity(params.chunking),
        )
        yield session
        if lock:
            _write_marker(index_dir / PUBLISHED_MARKER, manifest)
    finally:
        if session is not None and session._store is not None:
            session._store.close()
        manifest.close()
        if handle is not None:
            handle.close()


def _write_marker(path: Path, manifest: Manifest) -> None:
    """PUBLISHED_MARKER: which version is published, rewritten only when that changes. It is the index's DVC
    output and what later stages depend on: Chroma rewrites its own files even on a read, so the folder's hash
    says nothing about whether the index changed."""
    info = manifest.version(manifest.published())
    marker: dict[str, object] = {"index_version": manifest.published()}
    if info is not None:
        marker.update(collection=info.collection, embedder=info.embedder, chunker=info.chunker)
    text = json.dumps(marker, indent=2) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _lock(path: Path) -> IO[str]:
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole run, closed by open_index
    fcntl.flock(handle, fcntl.LOCK_EX)  # a second run waits its turn: runs queue, they never race
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle

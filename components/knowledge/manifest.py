"""The manifest: the published index versions, in one SQLite file, changed only by atomic transactions.

Chroma holds vectors; the manifest holds the truth about which of them each version contains. Every record
(one chunk of one document in one collection) and every document row carries an interval [v_min, v_max): it
is part of version V when v_min <= V < v_max. Publishing version N is one transaction that closes removed
intervals at N, opens new ones at N and moves the `published` pointer; a crash before it leaves version N-1
exactly as it was. The same intervals are mirrored on the Chroma records, so a reader filters by version.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

OPEN = 2**31 - 1  # v_max of an interval that is still open
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions(
  version INTEGER PRIMARY KEY, created_at REAL NOT NULL, collection TEXT NOT NULL,
  embedder TEXT NOT NULL, chunker TEXT NOT NULL, kind TEXT NOT NULL, report TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs(
  path TEXT NOT NULL, sha256 TEXT NOT NULL, stale INTEGER NOT NULL, error TEXT, bad_sha TEXT,
  v_min INTEGER NOT NULL, v_max INTEGER NOT NULL, PRIMARY KEY (path, v_min));
CREATE TABLE IF NOT EXISTS records(
  id TEXT PRIMARY KEY, collection TEXT NOT NULL, chunk_id TEXT NOT NULL, doc TEXT NOT NULL,
  chunk_hash TEXT NOT NULL, v_min INTEGER NOT NULL, v_max INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS records_by_interval ON records(collection, v_max, v_min);
CREATE INDEX IF NOT EXISTS records_by_hash ON records(collection, chunk_hash);
CREATE TABLE IF NOT EXISTS texts(chunk_hash TEXT PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stat_cache(path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
  sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections(name TEXT PRIMARY KEY, embedder TEXT NOT NULL, chunker TEXT NOT NULL,
  removed_since_compact INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS runs(id INTEGER PRIMARY KEY AUTOINCREMENT, finished_at REAL NOT NULL, reason TEXT NOT NULL,
  index_version INTEGER NOT NULL, published INTEGER NOT NULL, changed INTEGER NOT NULL, failed INTEGER NOT NULL,
  duration_s REAL NOT NULL, mlflow_run_id TEXT);
"""


@dataclass(frozen=True)
class Record:
    id: str
    collection: str
    chunk_id: str
    doc: str
    chunk_hash: str
    v_min: int
    v_max: int


@dataclass(frozen=True)
class DocRow:
    """A document in a version. `sha256` is the content its chunks came from (empty if it never parsed);
    a stale row keeps those chunks while the file fails with `error`; `bad_sha` is the failing content."""

    path: str
    sha256: str
    stale: bool = False
    error: str | None = None
    bad_sha: str | None = None


@dataclass(frozen=True)
class VersionInfo:
    version: int
    created_at: float
    collection: str
    embedder: str
    chunker: str
    kind: str
    report: str


@dataclass(frozen=True)
class IndexRun:
    """A journaled index run: when it finished, why it ran, what it did, and its MLflow run if it has one."""

    finished_at: float
    reason: str
    index_version: int
    published: bool
    changed: int  # documents added, modified, deleted or renamed
    failed: int  # documents that failed to parse
    duration_s: float
    mlflow_run_id: str | None = None


class Manifest:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- reads -------------------------------------------------------------------------------------------
    def published(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key='published'").fetchone()
        return int(row[0]) if row else 0

    def version(self, version: int) -> VersionInfo | None:
        row = self.db.execute(
            "SELECT version, created_at, collection, embedder, chunker, kind, report FROM versions WHERE version=?",
            (version,),
        ).fetchone()
        return VersionInfo(*row) if row else None

    def versions(self) -> list[VersionInfo]:
        rows = self.db.execute(
            "SELECT version, created_at, collection, embedder, chunker, kind, report FROM versions ORDER BY version"
        )
        return [VersionInfo(*r) for r in rows]

    def latest_version_id(self) -> int:
        row = self.db.execute("SELECT MAX(version) FROM versions").fetchone()
        return int(row[0] or 0)

    def docs_at(self, version: int) -> dict[str, DocRow]:
        rows = self.db.execute(
            "SELECT path, sha256, stale, error, bad_sha FROM docs WHERE v_min<=? AND v_max>?",
            (version, version),
        )
        return {r[0]: DocRow(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows}

    def records_at(self, version: int, collection: str | None = None) -> list[Record]:
        sql = "SELECT id, collection, chunk_id, doc, chunk_hash, v_min, v_max FROM records WHERE v_min<=? AND v_max>?"
        args: tuple = (version, version)
        if collection is not None:
            sql += " AND collection=?"
            args += (collection,)
        return [Record(*r) for r in self.db.execute(sql, args)]

    def records_in(self, collection: str) -> list[Record]:
        rows = self.db.execute(
            "SELECT id, collection, chunk_id, doc, chunk_hash, v_min, v_max FROM records WHERE collection=?",
            (collection,),
        )
        return [Record(*r) for r in rows]

    def vector_sources(self, collection: str, hashes: Iterable[str]) -> dict[str, str]:
        """chunk_hash -> id of a record in `collection` whose stored vector can be copied."""
        out: dict[str, str] = {}
        hashes = list(hashes)
        for i in range(0, len(hashes), 500):
            part = hashes[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                f"SELECT chunk_hash, id FROM records WHERE collection=? AND chunk_hash IN ({marks})",
                (collection, *part),
            )
            out.update({h: rid for h, rid in rows})
        return out

    def texts(self, hashes: Iterable[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        hashes = list(hashes)
        for i in range(0, len(hashes), 500):
            part = hashes[i : i + 500]
            marks = ",".join("?" * len(part))
            out.update(self.db.execute(f"SELECT chunk_hash, text FROM texts WHERE chunk_hash IN ({marks})", part))
        return out

    def stat_cache(self) -> dict[str, tuple[int, int, str]]:
        rows = self.db.execute("SELECT path, size, mtime_ns, sha256 FROM stat_cache")
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def collection_removed(self, name: str) -> int:
        row = self.db.execute("SELECT removed_since_compact FROM collections WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def known_collections(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM collections")]

    def runs_since(self, since: float) -> list[IndexRun]:
        """Every index run journaled since `since` (epoch seconds), newest first."""
        rows = self.db.execute(
            "SELECT finished_at, reason, index_version, published, changed, failed, duration_s, mlflow_run_id "
            "FROM runs WHERE finished_at>=? ORDER BY id DESC", (since,))  # fmt: skip
        return [IndexRun(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7]) for r in rows]

    # -- writes ------------------------------------------------------------------------------------------
    def journal_run(self, run: IndexRun) -> None:
        """One row per index run, whatever it did: the history of runs that changed nothing lives here only."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs(finished_at, reason, index_version, published, changed, failed, duration_s, "
                "mlflow_run_id) VALUES (?,?,?,?,?,?,?,?)",
                (run.finished_at, run.reason, run.index_version, int(run.published), run.changed, run.failed,
                 run.duration_s, run.mlflow_run_id))  # fmt: skip

    def retained_versions(self, keep: int) -> list[int]:
        rows = self.db.execute("SELECT version FROM versions ORDER BY version DESC LIMIT ?", (keep,))
        return sorted(r[0] for r in rows)

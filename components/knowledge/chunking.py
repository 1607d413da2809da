"""Split a document's text into chunks whose boundaries are local to its sections.

Boundaries never depend on text far away: a chunk is built only from the paragraphs of one section, so an
edit in one section leaves the chunks of every other section byte-identical (and so their content hashes,
and so their vectors, are reused). Each chunk after the first of a section repeats the section heading,
which keeps the chunk self-describing for retrieval.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from components.config import ChunkingParams

CHUNKER_VERSION = "sections-v1"
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+\S")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Chunk:
    chunk_id: str  # stable id of this chunk in this document: chunk_id(doc, chunk_hash, occurrence)
    chunk_hash: str  # content_hash of the text alone: equal text anywhere shares one vector
    doc: str
    text: str


def chunker_identity(params: ChunkingParams) -> str:
    return f"{CHUNKER_VERSION}:max={params.max_chars}:min={params.min_chars}"


def content_hash(text: str) -> str:
    """sha256 of a chunk's exact text (not normalised: one changed byte is a new vector)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_id(doc: str, chunk_hash: str, occurrence: int) -> str:
    """The id of a chunk in its document: the `occurrence`-th (from 0) chunk of that text in `doc`."""
    return hashlib.sha256(f"{doc}\0{chunk_hash}\0{occurrence}".encode()).hexdigest()[:24]


def chunk_ids(doc: str, hashes: list[str]) -> list[str]:
    """The ids of a document's chunks, in order, from their content hashes (a moved document gets new ids)."""
    seen: dict[str, int] = {}
    ids = []
    for h in hashes:
        ids.append(chunk_id(doc, h, seen.get(h, 0)))
        seen[h] = seen.get(h, 0) + 1
    return ids


def chunk_document(doc: str, text: str, params: ChunkingParams) -> list[Chunk]:
    pieces = split_text(text, params)
    hashes = [content_hash(piece) for piece in pieces]
    return [
        Chunk(chunk_id=cid, chunk_hash=h, doc=doc, text=piece)
        for cid, h, piece in zip(chunk_ids(doc, hashes), hashes, pieces, strict=True)
    ]


def split_text(text: str, params: ChunkingParams) -> list[str]:
    out: list[str] = []
    for heading, paragraphs in _sections(text):
        out.extend(_pack_section(heading, paragraphs, params))
    return out


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, paragraphs) pairs; text before the first heading has an empty heading."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        block = block.strip()
        if not block:
            continue
        first, _, rest = block.partition("\n")
        if _HEADING.match(first):
            sections.append((first.strip(), []))
            if rest.strip():
                sections[-1][1].append(rest.strip())
        else:
            sections[-1][1].append(block)
    return [s for s in sections if s[0] or s[1]]


def _pack_section(heading: str, paragraphs: list[str], params: ChunkingParams) -> list[str]:
    pieces: list[str] = []
    for para in paragraphs:
        pieces.extend(_split_long(para, params.max_chars))
    chunks: list[str] = []
    current = heading
    for piece in pieces:
        candidate = f"{current}\n\n{piece}" if current else piece
        if len(candidate) <= params.max_chars or len(current) < params.min_chars:
            current = candidate
        else:
            chunks.append(current)
            current = f"{heading}\n\n{piece}" if heading else piece
    if current and current != heading:  # a heading with no body of its own is not worth a vector
        chunks.append(current)
    return chunks


def _split_long(paragraph: str, max_chars: int) -> list[str]:
    if len(paragraph) <= max_chars:
        return [paragraph]
    parts: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(paragraph):
        while len(sentence) > max_chars:  # a "sentence" with no stop: cut at a space, else hard
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            parts.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if current and len(current) + 1 + len(sentence) > max_chars:
            parts.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        parts.append(current)
    return [p for p in parts if p]

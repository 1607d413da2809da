"""Split a document's text into chunks whose boundaries are local to its sections.

Boundaries never depend on text far away: a chunk is built only from the paragraphs of one section, so an
edit in one section leaves the chunks of every other section byte-identical (and so their content hashes,
and so their vectors, are reused). Each chunk after the first of a section repeats the section heading,
which keeps the chunk self-describing for retrieval.

A chunk of a later section loses the document's title ("## Fees" says whose fees only under "# Premium plan"):
with `chunking.embed_title`, each chunk carries `context`, the headings above its own (the title, and the parents
of a nested section; in plain text without headings, a short first paragraph), and is embedded (and indexed for
BM25) as `embedding_text` = context + text, while `text`, what is stored and shown, stays the chunk alone. The
content hash is then the hash of that embedded text, so a renamed title gives the document's chunks new vectors,
and equal text under two titles never shares one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from components.config import ChunkingParams

CHUNKER_VERSION = "sections-v1"
PLAIN_TITLE_CHARS = 200  # a headingless document's first paragraph up to this long is its title block
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+\S")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Chunk:
    chunk_id: str  # stable id of this chunk in this document: chunk_id(doc, chunk_hash, occurrence)
    chunk_hash: str  # content_hash of embedding_text: equal embedded text anywhere shares one vector
    doc: str
    text: str  # what is stored and shown
    context: str = ""  # the headings above this chunk's section (chunking.embed_title), embedded with it

    @property
    def embedding_text(self) -> str:
        return embedding_text(self.context, self.text)


def chunker_identity(params: ChunkingParams) -> str:
    """Part of the index key: it changes whenever the embedded texts could, so vectors are never mixed."""
    titles = ":titles" if params.embed_title else ""  # indexes built without titles keep their key
    return f"{CHUNKER_VERSION}:max={params.max_chars}:min={params.min_chars}{titles}"


def embedding_text(context: str, text: str) -> str:
    """What the model reads for a chunk: its headings above, then its own text."""
    return f"{context}\n\n{text}" if context else text


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
    pieces = split_with_context(text, params)
    hashes = [content_hash(embedding_text(context, piece)) for context, piece in pieces]
    return [
        Chunk(chunk_id=cid, chunk_hash=h, doc=doc, text=piece, context=context)
        for cid, h, (context, piece) in zip(chunk_ids(doc, hashes), hashes, pieces, strict=True)
    ]


def split_text(text: str, params: ChunkingParams) -> list[str]:
    return [piece for _, piece in split_with_context(text, params)]


def split_with_context(text: str, params: ChunkingParams) -> list[tuple[str, str]]:
    """(context, chunk text) pairs in order; the context is "" unless `params.embed_title`."""
    sections = _sections(text)
    lead = _plain_title(sections) if params.embed_title else ""
    out: list[tuple[str, str]] = []
    for context, heading, paragraphs in sections:
        for piece in _pack_section(heading, paragraphs, params):
            if not params.embed_title:
                context = ""
            elif lead and not piece.startswith(lead):
                context = lead
            out.append((context, piece))
    return out


def _plain_title(sections: list[tuple[str, str, list[str]]]) -> str:
    """The title block of a document without Markdown headings (plain text: "WHY WAS MY CARD DECLINED?" and
    its date line): its first paragraph when that is short and more follows; "" otherwise."""
    if len(sections) != 1 or sections[0][1]:
        return ""
    paragraphs = sections[0][2]
    return paragraphs[0] if len(paragraphs) > 1 and len(paragraphs[0]) <= PLAIN_TITLE_CHARS else ""


def _sections(text: str) -> list[tuple[str, str, list[str]]]:
    """(context, heading, paragraphs) triples; text before the first heading has an empty heading. The context
    is the headings of higher level above the section ("# Title" above "## Fees"), one a line."""
    sections: list[tuple[str, str, list[str]]] = [("", "", [])]
    above: list[tuple[int, str]] = []  # (level, heading) of the open headings, outermost first
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        block = block.strip()
        if not block:
            continue
        first, _, rest = block.partition("\n")
        if _HEADING.match(first):
            heading = first.strip()
            level = len(heading) - len(heading.lstrip("#"))
            above = [(lv, h) for lv, h in above if lv < level]
            sections.append(("\n".join(h for _, h in above), heading, []))
            above.append((level, heading))
            if rest.strip():
                sections[-1][2].append(rest.strip())
        else:
            sections[-1][2].append(block)
    return [s for s in sections if s[1] or s[2]]


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

"""Find documents under the docs folder and turn each into text, refusing bad input with a clear reason.

Nothing here raises for a single bad document: the caller gets a `DocumentError` naming the path and why,
and decides what to keep (the last good chunks of a document that no longer parses stay, marked stale).
Each suffix has one parser in `PARSERS`; a parser's version is recorded with every document it read, so
bumping it re-parses the files of its suffixes, and only those, on the next run.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path

_HASH_BLOCK = 1 << 20


class DocumentError(Exception):
    """One document could not be read or parsed; `reason` says why, for the run's report."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class FileStat:
    path: str  # relative to the docs folder, POSIX separators: the document's identity
    size: int
    mtime_ns: int


@dataclass
class Scan:
    files: dict[str, FileStat] = field(default_factory=dict)
    refused: list[DocumentError] = field(default_factory=list)


@dataclass(frozen=True)
class ParsedDocument:
    text: str
    warnings: tuple[str, ...] = ()
    parser: str = ""  # the identity of the parser that read it (Parser.identity)


@dataclass(frozen=True)
class Parser:
    """Bytes of one file type to text: `parse(relative path, bytes)` returns a ParsedDocument or raises
    DocumentError. Bump `version` with any change that can alter the text of a file already indexed."""

    name: str
    version: int
    parse: Callable[[str, bytes], ParsedDocument]

    @property
    def identity(self) -> str:
        return f"{self.name}@{self.version}"


def scan_documents(root: Path, suffixes: tuple[str, ...]) -> Scan:
    """Stat every candidate file under root (no reads). Symlinks that leave root are refused."""
    if not root.is_dir():
        raise FileNotFoundError(f"docs folder {root} does not exist or is not a folder")
    real_root = root.resolve()
    scan = Scan()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(suffixes):
                continue
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            try:
                st = _stat_inside(full, real_root, rel)
            except DocumentError as err:
                scan.refused.append(err)
                continue
            except FileNotFoundError:
                continue  # vanished between listing and stat: it is simply not there
            scan.files[rel] = FileStat(rel, st.st_size, st.st_mtime_ns)
    return scan


def _stat_inside(full: Path, real_root: Path, rel: str) -> os.stat_result:
    if full.is_symlink():
        target = full.resolve()
        if not target.is_relative_to(real_root):
            raise DocumentError(rel, f"refused: symlink points outside the docs folder (to {target})")
    st = full.stat()
    if not stat.S_ISREG(st.st_mode):
        raise DocumentError(rel, "refused: not a regular file")
    return st


def read_bytes(root: Path, rel: str, max_bytes: int) -> bytes:
    """Read one document, re-checking that it still lies inside root and is within the size limit."""
    full = root / rel
    try:
        st = _stat_inside(full, root.resolve(), rel)
        if st.st_size > max_bytes:
            raise DocumentError(rel, f"file is {st.st_size:,} bytes, over the limit index.max_file_bytes={max_bytes:,}")
        with open(full, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise DocumentError(rel, "vanished during the run (deleted or moved while indexing)") from None
    except PermissionError:
        raise DocumentError(rel, "unreadable: permission denied") from None
    except IsADirectoryError:
        raise DocumentError(rel, "refused: not a regular file") from None
    if len(data) > max_bytes:
        raise DocumentError(rel, f"file grew past the limit index.max_file_bytes={max_bytes:,} while reading")
    return data


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_document(rel: str, data: bytes) -> ParsedDocument:
    """Bytes to text by the parser of the file's suffix. Raises DocumentError for empty, binary, encrypted or
    broken files, and for a suffix no parser reads."""
    parser = parser_for(rel)
    if not data.strip():
        raise DocumentError(rel, "empty document (no text)")
    doc = parser.parse(rel, data)
    if not doc.text.strip():
        raise DocumentError(rel, "no extractable text")
    return replace(doc, parser=parser.identity)


def parser_for(rel: str) -> Parser:
    suffix = Path(rel).suffix.lower()
    if suffix not in PARSERS:
        raise DocumentError(rel, f"no parser for suffix {suffix!r}; parsers exist for {', '.join(sorted(PARSERS))}")
    return PARSERS[suffix]


def parsed_by(rel: str, recorded: str) -> str:
    """The parser a manifest row says read `rel`. Rows written before parsers had versions record '': those
    files were read by version 1 of the parser their suffix has ('' again for a suffix with none)."""
    if recorded:
        return recorded
    parser = PARSERS.get(Path(rel).suffix.lower())
    return f"{parser.name}@1" if parser else ""


def unknown_suffixes(suffixes: Iterable[str]) -> list[str]:
    """The suffixes (lower case, with the dot) that no parser reads."""
    return [s for s in suffixes if s.lower() not in PARSERS]


def _parse_text(rel: str, data: bytes) -> ParsedDocument:
    text, warnings = decode_text(rel, data)
    return ParsedDocument(text, warnings)


def _parse_html(rel: str, data: bytes) -> ParsedDocument:
    text, warnings = decode_text(rel, data)
    return ParsedDocument(_html_to_text(text), warnings)


def decode_text(rel: str, data: bytes) -> tuple[str, tuple[str, ...]]:
    """A text file's bytes as the indexer reads them: UTF-8 (BOM dropped), else cp1252 with a warning."""
    head = data[:8192]
    if b"\x00" in head:
        raise DocumentError(rel, f"binary content in a {Path(rel).suffix} file (NUL bytes); expected text")
    try:
        return data.decode("utf-8-sig"), ()
    except UnicodeDecodeError as exc:
        text = data.decode("cp1252", errors="replace")
        return text, (f"invalid UTF-8 at byte {exc.start}; decoded as cp1252 with replacement characters",)


def _parse_pdf(rel: str, data: bytes) -> ParsedDocument:
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentError(rel, "encrypted PDF: cannot extract text without the password")
        pages = [page.extract_text() or "" for page in reader.pages]
    except DocumentError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise DocumentError(rel, f"broken or truncated PDF: {exc}") from None
    return ParsedDocument("\n\n".join(p.strip() for p in pages if p.strip()))


_BLOCK_TAGS = {
    "p",
    "div",
    "section",
    "article",
    "br",
    "li",
    "tr",
    "table",
    "ul",
    "ol",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "footer",
    "main",
    "blockquote",
    "pre",
    "dt",
    "dd",
    "title",
}
_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "head"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP_TAGS:
            self._skip += 1
        if tag in {"h1", "h2", "h3", "h4", "h5", "h6"} and not self._skip:
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in {"td", "th"}:
            self.parts.append(" | ")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag not in {"li", "tr", "br"} else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP_TAGS and self._skip:
            self._skip -= 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)


def _html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    body = "\n".join(lines)
    while "\n\n\n" in body:
        body = body.replace("\n\n\n", "\n\n")
    title = " ".join(parser.title.split())
    if title and not body.lstrip().startswith("# "):
        body = f"# {title}\n\n{body}"
    return body.strip()


_TEXT = Parser("text", 1, _parse_text)  # Markdown stays Markdown: its headings are what chunking splits on
_HTML = Parser("html", 1, _parse_html)
_PDF = Parser("pdf", 1, _parse_pdf)
PARSERS: dict[str, Parser] = {
    ".md": _TEXT,
    ".markdown": _TEXT,
    ".txt": _TEXT,
    ".html": _HTML,
    ".htm": _HTML,
    ".pdf": _PDF,
}

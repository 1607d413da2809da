import os
from pathlib import Path

import pytest

from components.config import IndexParams
from components.knowledge.documents import (
    PARSERS,
    DocumentError,
    parse_document,
    parsed_by,
    parser_for,
    read_bytes,
    scan_documents,
    unknown_suffixes,
)

SUFFIXES = (".md", ".txt", ".html", ".pdf")


def _pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one text line per page, built by hand (no PDF writer needed)."""
    objs = ["<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objs.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>")
    objs.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {5 + 2 * i} 0 R "
                    "/Resources << /Font << /F1 3 0 R >> >> >>")  # fmt: skip
        objs.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    out, offsets = b"%PDF-1.4\n", []
    for n, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_markdown_and_text_pass_through() -> None:
    assert parse_document("a.md", b"# Title\n\nBody").text == "# Title\n\nBody"
    assert parse_document("a.txt", "caf\u00e9".encode()).warnings == ()


def test_html_keeps_headings_and_tables_and_drops_scripts() -> None:
    html = (
        b"<html><head><title>Fees</title><style>p{}</style></head><body><script>var x=1;</script>"
        b"<h2>ATM</h2><p>Two euro.</p><table><tr><td>SEPA</td><td>free</td></tr></table></body></html>"
    )
    text = parse_document("f.html", html).text
    assert text.startswith("# Fees")
    assert "## ATM" in text and "Two euro." in text and "SEPA | free" in text.replace("|  ", "| ")
    assert "var x" not in text and "p{}" not in text


def test_pdf_text_is_extracted_from_every_page() -> None:
    text = parse_document("g.pdf", _pdf(["First page text", "Second page text"])).text
    assert "First page text" in text and "Second page text" in text


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.md", b"", "empty document"),
        ("blank.txt", b"  \n\n ", "empty document"),
        ("binary.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary content"),
        ("truncated.pdf", _pdf(["Hello there"])[:180], "broken or truncated PDF"),
        ("notpdf.pdf", b"%PDF-1.4 garbage", "PDF"),
        ("empty.html", b"<html><script>x()</script></html>", "no extractable text"),
    ],
)
def test_bad_documents_raise_with_path_and_reason(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(DocumentError) as info:
        parse_document(name, data)
    assert info.value.path == name
    assert reason in info.value.reason


def test_encrypted_pdf_is_refused() -> None:
    pypdf = pytest.importorskip("pypdf")
    import io

    reader = pypdf.PdfReader(io.BytesIO(_pdf(["secret"])))
    writer = pypdf.PdfWriter(clone_from=reader)
    writer.encrypt("pw", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    with pytest.raises(DocumentError, match="encrypted PDF"):
        parse_document("locked.pdf", buf.getvalue())


def test_invalid_utf8_decodes_with_a_warning() -> None:
    doc = parse_document("latin.txt", "Geb\u00fchren: 2 \u20ac".encode("cp1252"))
    assert "Geb\u00fchren" in doc.text
    assert doc.warnings and "invalid UTF-8 at byte 3" in doc.warnings[0]


def test_scan_refuses_symlinks_that_escape_and_skips_other_suffixes(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("a")
    (root / "sub" / "b.txt").write_text("b")
    (root / "image.png").write_bytes(b"x")
    (root / ".hidden.md").write_text("h")
    (tmp_path / "secret.md").write_text("s")
    os.symlink(tmp_path / "secret.md", root / "escape.md")
    os.symlink(root / "a.md", root / "inside.md")
    scan = scan_documents(root, SUFFIXES)
    assert sorted(scan.files) == ["a.md", "inside.md", "sub/b.txt"]
    assert [(e.path, "outside the docs folder" in e.reason) for e in scan.refused] == [("escape.md", True)]


def test_read_enforces_the_size_limit_and_reports_vanished_files(tmp_path: Path) -> None:
    (tmp_path / "big.md").write_text("x" * 101)
    with pytest.raises(DocumentError, match=r"over the limit index\.max_file_bytes=100"):
        read_bytes(tmp_path, "big.md", 100)
    with pytest.raises(DocumentError, match="vanished"):
        read_bytes(tmp_path, "gone.md", 100)


def test_missing_docs_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="docs folder"):
        scan_documents(tmp_path / "nope", SUFFIXES)


def test_every_default_suffix_has_a_parser_and_documents_record_which_read_them() -> None:
    from components.config import PARSED_SUFFIXES

    assert unknown_suffixes(IndexParams().suffixes) == []
    assert set(PARSED_SUFFIXES) == set(PARSERS)  # the configuration's list (checked at load time) is the parsers'
    assert parse_document("a.md", b"# A\n\nBody.").parser == PARSERS[".md"].identity == "text@1"
    assert parse_document("a.HTM", b"<p>Body.</p>").parser == "html@1"  # suffixes match in any case
    assert parse_document("a.pdf", _pdf(["Body."])).parser == "pdf@1"


def test_a_suffix_with_no_parser_is_an_error_not_text() -> None:
    with pytest.raises(DocumentError, match=r"no parser for suffix '\.rst'; parsers exist for .*\.md.*\.pdf"):
        parse_document("notes.rst", b"Plain words.")
    assert unknown_suffixes([".md", ".RST", ".docx"]) == [".RST", ".docx"]


def test_rows_from_before_parser_versions_were_read_by_version_1() -> None:
    assert parsed_by("a.md", "") == "text@1"
    assert parsed_by("a.md", "text@3") == "text@3"  # a recorded identity is taken as it is
    assert parsed_by("a.rst", "") == ""  # a suffix with no parser today
    assert parser_for("b/c.markdown").identity == parsed_by("x.txt", "")  # one parser reads both suffixes

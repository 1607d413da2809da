import hashlib

from components.config import ChunkingParams
from components.knowledge.chunking import chunk_document, chunk_ids, chunker_identity, content_hash, split_text

P = ChunkingParams(max_chars=300, min_chars=50)


def _doc(sections: dict[str, list[str]]) -> str:
    return "\n\n".join(f"## {h}\n\n" + "\n\n".join(paras) for h, paras in sections.items())


SECTIONS = {
    "Fees": ["ATM withdrawals cost 2 EUR after five a month. " * 3, "Exchange fee is 1.5 percent."],
    "Cards": ["Freeze a lost card in the app. " * 4, "Replacements arrive in 5 days. " * 3],
    "Support": ["Open 8 to 20 on working days."],
}


def test_an_edit_in_one_section_leaves_every_other_chunk_identical() -> None:
    before = {c.chunk_hash for c in chunk_document("d.md", _doc(SECTIONS), P)}
    edited = {**SECTIONS, "Cards": [SECTIONS["Cards"][0], "Replacements arrive in 3 days now."]}
    after = {c.chunk_hash for c in chunk_document("d.md", _doc(edited), P)}
    changed = after - before
    assert changed, "the edited section must produce a new chunk"
    new_texts = [t for t in split_text(_doc(edited), P) if content_hash(t) in changed]
    assert all(t.startswith("## Cards") for t in new_texts)
    assert len(before - after) == len(changed)  # exactly the edited section's chunks were replaced


def test_chunks_respect_max_chars_and_repeat_the_heading() -> None:
    chunks = split_text(_doc(SECTIONS), P)
    assert all(len(c) <= P.max_chars + 20 for c in chunks)
    assert all(c.startswith("## ") for c in chunks)


def test_a_long_paragraph_without_breaks_is_split() -> None:
    text = "word " * 400
    chunks = split_text(text, P)
    assert len(chunks) > 1 and all(len(c) <= P.max_chars for c in chunks)
    assert " ".join(" ".join(chunks).split()) == " ".join(text.split())  # nothing lost


def test_chunk_ids_depend_on_doc_and_text_and_duplicates_stay_distinct() -> None:
    text = "# T\n\n" + "same paragraph here. " * 10 + "\n\n# U\n\n" + "same paragraph here. " * 10
    a = chunk_document("a.md", text, P)
    b = chunk_document("b.md", text, P)
    assert [c.chunk_hash for c in a] == [c.chunk_hash for c in b]
    assert {c.chunk_id for c in a}.isdisjoint({c.chunk_id for c in b})
    assert len({c.chunk_id for c in a}) == len(a)


def test_heading_only_sections_make_no_chunk() -> None:
    assert split_text("# Title\n\n## Sub\n\nBody text.", P) == ["## Sub\n\nBody text."]


def test_identity_changes_with_the_parameters() -> None:
    assert chunker_identity(P) != chunker_identity(ChunkingParams(max_chars=301, min_chars=50))


def test_chunk_ids_keep_their_formula_and_a_moved_document_gets_the_ids_it_would_be_chunked_with() -> None:
    text = "# T\n\n" + "same paragraph here. " * 10 + "\n\n# U\n\n" + "same paragraph here. " * 10
    chunks = chunk_document("a.md", text, P)
    # the ids of every index ever published: sha256(doc NUL content hash NUL occurrence), 24 hex digits
    seen: dict[str, int] = {}
    for c in chunks:
        assert c.chunk_hash == hashlib.sha256(c.text.encode()).hexdigest() == content_hash(c.text)
        occurrence = seen.get(c.chunk_hash, 0)
        seen[c.chunk_hash] = occurrence + 1
        assert c.chunk_id == hashlib.sha256(f"a.md\0{c.chunk_hash}\0{occurrence}".encode()).hexdigest()[:24]
    moved = chunk_ids("b/a.md", [c.chunk_hash for c in chunks])
    assert moved == [c.chunk_id for c in chunk_document("b/a.md", text, P)]


TITLED = (
    "# Premium plan\n\nThe plan costs 9 EUR a month.\n\n## Fees\n\nATM withdrawals cost nothing.\n\n"
    "### Abroad\n\nNo fee."
)
UNTITLED = ChunkingParams(max_chars=300, min_chars=50, embed_title=False)


def test_a_chunk_is_embedded_with_the_headings_above_it_and_stored_without_them() -> None:
    chunks = chunk_document("plan.md", TITLED, P)
    assert [c.text for c in chunks] == split_text(TITLED, UNTITLED)  # the stored text is what it always was
    assert [c.context for c in chunks] == ["", "# Premium plan", "# Premium plan\n## Fees"]
    assert chunks[2].embedding_text == "# Premium plan\n## Fees\n\n### Abroad\n\nNo fee."
    assert all(c.chunk_hash == content_hash(c.embedding_text) for c in chunks)  # the hash covers what is embedded


def test_without_embed_title_chunks_have_no_context_and_keep_their_hashes() -> None:
    chunks = chunk_document("plan.md", TITLED, UNTITLED)
    assert all(c.context == "" and c.embedding_text == c.text for c in chunks)
    assert [c.chunk_hash for c in chunks] == [content_hash(t) for t in split_text(TITLED, UNTITLED)]


def test_a_renamed_title_changes_every_chunk_under_it_and_equal_text_under_two_titles_is_two_vectors() -> None:
    renamed = chunk_document("plan.md", TITLED.replace("Premium plan", "Plus plan"), P)
    assert not {c.chunk_hash for c in renamed} & {c.chunk_hash for c in chunk_document("plan.md", TITLED, P)}
    assert [c.text for c in renamed][1:] == [c.text for c in chunk_document("plan.md", TITLED, P)][1:]


def test_plain_text_takes_its_short_first_paragraph_as_title_and_a_single_paragraph_has_none() -> None:
    text = "WHY WAS MY CARD DECLINED?\nLast updated: 2026\n\n" + "\n\n".join(["A reason is shown in the app. " * 6] * 3)
    chunks = chunk_document("declined.txt", text, P)
    assert len(chunks) > 1 and chunks[0].context == ""
    assert all(c.context == "WHY WAS MY CARD DECLINED?\nLast updated: 2026" for c in chunks[1:])
    abstract = "Measurements of the electron density in the ionosphere. " * 3  # one paragraph: Vaswani, XQuAD
    assert [c.context for c in chunk_document("a.txt", abstract, P)] == [""]


def test_identity_changes_with_embed_title_and_keeps_its_old_form_without() -> None:
    assert chunker_identity(P) == "sections-v1:max=300:min=50:titles"
    assert chunker_identity(UNTITLED) == "sections-v1:max=300:min=50"  # indexes built before keep their key

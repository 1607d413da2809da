"""A long-request set closer to real support traffic: short titled documents, and requests made of a persona, the
customer's situation, and the need in 2-4 sentences, labelled with the documents needed (issue 20).

Two corpora, each with 97 requests (as many as the bank knowledge base that prompted it had scenarios):

* `northwind`: the sample deployment's own 55 documents (data/docs: titled HTML, Markdown and text pages with
  sections). A request needs 1-3 documents: for each, one or two of the behaviour suite's seed questions whose
  single gold document it is (data/behaviour/seeds.jsonl, a question and a paraphrase).
* `xquad-policies`: the 240 XQuAD paragraphs as 240 short policy-like pages. Each is titled with its article's title
  and a section name (`# Super Bowl 50: Background`), opens with its first sentence, and puts the rest under one or
  two generic headings (`## Details`, `## Key points`), as a help-centre page does; a third of them end with a
  boilerplate line (last reviewed, where to get help). A request needs 1-3 pages (of 1-3 articles); for each, one
  or two of its questions, sometimes after a goal sentence naming the article's subject ("I'm reading up on the
  Normans.").

* `northwind-situations`: the same 55 documents; a request is a persona and 2-6 real banking77 messages (the
  customer's own words, never written from a document) of 1-3 intents, labelled with the documents that answer
  those intents (`INTENT_DOCS`, a hand mapping of 33 of the 77 intents to the sample pages, checked against their
  text; the other intents are left out, so every message of a request has its documents labelled).

Every `northwind` and `xquad-policies` request opens with a persona sentence (templates below) and one or two
real customer messages from banking77 that state a situation (the conditions: about the customer's banking, not
about the documents needed, as in real traffic), then the needs, then sometimes a closing line. Output, in
`ragloop eval-retrieval`'s format (`{"id", "query", "relevant"}`), under bench/data/support_requests/:
`northwind.jsonl` and `northwind_situations.jsonl` (the sample deployment's paths, so `ragloop eval-retrieval`
scores them directly) and `xquad_policies.jsonl` (paths of the pages `xquad_policy_pages()` builds).

Derived from XQuAD (CC-BY-SA-4.0) and banking77 (CC-BY-4.0) questions and messages; the shared files themselves
are read by path and never copied. Deterministic: the same seed gives the same files.

    python bench/support_set.py [--seed 20]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
XQUAD = SHARED / "retrieval" / "xquad_en" / "xquad.en.json"
BANKING77 = SHARED / "behaviour" / "banking77" / "test.csv"
SEEDS = ROOT / "data" / "behaviour" / "seeds.jsonl"
OUT = ROOT / "bench" / "data" / "support_requests"
N_REQUESTS = 97

SECTIONS = ["Overview", "Background", "Key facts", "In detail", "Further notes"]  # one per paragraph of an article
HEADINGS = ["Details", "Key points", "What to know", "More information", "Conditions", "Exceptions"]
BOILERPLATE = ["*Last reviewed: March 2026. Information on this page may change without notice.*",
               "Need more help? Contact our support team through the app or call us on working days.",
               "This page is for information only and does not replace the full terms."]  # fmt: skip
PERSONAS = [
    "I'm a student who moved here for a one-year exchange programme.",
    "I run a small bakery and use my account for the business too.",
    "I'm a retired teacher and I don't use apps very much.",
    "I'm a freelance designer and I'm paid by clients abroad.",
    "I'm a nurse working night shifts, so I can only call in the morning.",
    "I'm a parent managing an account with my partner.",
    "I recently started my first full-time job.",
    "I'm travelling for work for the next three weeks.",
    "I moved back from Canada last month.",
    "I'm a pensioner and my daughter helps me with banking.",
    "I work in IT support and I'm helping my elderly father.",
    "I'm a premium customer and have been with you for six years.",
]
GOALS = ["I'm reading up on {subject}.", "I have to give a short talk about {subject}.",
         "My question is about {subject}.", "I'm helping my son with a school project on {subject}."]  # fmt: skip
CLOSERS = ["Thanks for your help.", "Thank you!", "I'd appreciate a quick answer.", ""]
INTENT_DOCS = {  # banking77 intent -> the sample documents (data/docs) that answer it
    "lost_or_stolen_card": ["cards/lost-or-stolen.md"],
    "card_swallowed": ["cards/lost-or-stolen.md"],
    "compromised_card": ["cards/lost-or-stolen.md", "security/report-fraud.txt"],
    "pin_blocked": ["cards/pin-reset.md"],
    "change_pin": ["cards/pin-reset.md"],
    "activate_my_card": ["cards/activation.md"],
    "card_arrival": ["cards/activation.md"],
    "card_about_to_expire": ["cards/replacement.md"],
    "getting_virtual_card": ["cards/virtual-cards.txt"],
    "get_disposable_virtual_card": ["cards/virtual-cards.txt"],
    "virtual_card_not_working": ["cards/virtual-cards.txt"],
    "contactless_not_working": ["cards/contactless-and-card-controls.md"],
    "declined_card_payment": ["cards/declined-payments.txt"],
    "apple_pay_or_google_pay": ["guides/set-up-apple-pay.md", "guides/set-up-google-pay.txt"],
    "terminate_account": ["accounts/close-account.md"],
    "edit_personal_details": ["accounts/change-address.md", "accounts/change-name.txt"],
    "verify_my_identity": ["accounts/kyc-verification.md"],
    "why_verify_identity": ["accounts/kyc-verification.md"],
    "unable_to_verify_identity": ["accounts/kyc-verification.md"],
    "card_payment_not_recognised": ["guides/dispute-a-charge.md"],
    "transaction_charged_twice": ["guides/dispute-a-charge.md", "faq/payments.md"],
    "pending_card_payment": ["faq/payments.md"],
    "Refund_not_showing_up": ["faq/payments.md"],
    "lost_or_stolen_phone": ["security/two-factor-and-device.md"],
    "passcode_forgotten": ["faq/app.md"],
    "exchange_rate": ["fees/foreign-exchange.html"],
    "exchange_charge": ["fees/foreign-exchange.html"],
    "direct_debit_payment_not_recognised": ["guides/set-up-direct-debits.md"],
    "transfer_timing": ["faq/transfers.html"],
    "pending_transfer": ["faq/transfers.html"],
    "transfer_not_received_by_recipient": ["faq/transfers.html"],
    "age_limit": ["guides/open-an-account.md"],
    "card_acceptance": ["cards/declined-payments.txt"],
}
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def subject(title: str) -> str:
    return title.replace("_", " ")


def xquad_articles() -> list[dict]:
    return json.loads(XQUAD.read_text(encoding="utf-8"))["data"]


def xquad_policy_pages(seed: int = 20) -> dict[str, str]:
    """The 240 pages of `xquad-policies`: relative path -> Markdown, one per XQuAD paragraph."""
    rng = random.Random(seed)
    pages = {}
    for art in xquad_articles():
        for p, para in enumerate(art["paragraphs"]):
            pages[_page_path(art["title"], p)] = _page(rng, subject(art["title"]), SECTIONS[p % len(SECTIONS)],
                                                       para["context"])  # fmt: skip
    return pages


def _page_path(title: str, p: int) -> str:
    return f"{slug(title)}/{slug(SECTIONS[p % len(SECTIONS)])}.md"


def _page(rng: random.Random, title: str, section: str, text: str) -> str:
    sentences = _SENTENCE.split(text.strip())
    intro, rest = sentences[0], sentences[1:]
    parts = [f"# {title}: {section}", intro]
    cut = len(rest) // 2 if len(rest) >= 4 else len(rest)
    for body, heading in zip((rest[:cut], rest[cut:]), rng.sample(HEADINGS, 2), strict=True):
        if body:
            parts += [f"## {heading}", " ".join(body)]
    if rng.random() < 1 / 3:
        parts.append(rng.choice(BOILERPLATE))
    return "\n\n".join(parts) + "\n"


_QUESTION = re.compile(
    r"^(how|what|why|when|where|which|who|can|could|is|are|do|does|did|will|would|should|may|"
    r"i need to know|please|tell me)\b",
    re.IGNORECASE,
)


def banking77_messages() -> list[str]:
    """Real customer messages that state a situation (no question of their own): the request's conditions."""
    with open(BANKING77, encoding="utf-8", newline="") as fh:
        texts = [" ".join(row["text"].split()) for row in csv.DictReader(fh)]
    return [t for t in texts if 30 <= len(t) <= 160 and "?" not in t and not _QUESTION.match(t)]


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text[-1] in ".!?" else text + "."


def _request(rng: random.Random, messages: list[str], needs: list[list[str]]) -> str:
    conditions = [_sentence(m) for m in rng.sample(messages, rng.randint(1, 2))]
    body = [rng.choice(PERSONAS), *conditions]
    links = ["", "Also, ", "On another matter, ", "And ", "One more thing: "]
    for i, sentences in enumerate(needs):
        first, *more = sentences
        link = rng.choice(links[1:]) if i else ""
        keep = first.startswith(("I ", "I'")) or not link  # "I'm" stays capitalised after a link
        body.append(link + (first if keep else first[0].lower() + first[1:]))
        body += more
    closer = rng.choice(CLOSERS)
    return " ".join([*body, closer] if closer else body)


def xquad_requests(seed: int, messages: list[str]) -> list[dict]:
    rng = random.Random(seed)
    articles = xquad_articles()
    rows = []
    for i in range(N_REQUESTS):
        arts = rng.sample(range(len(articles)), rng.randint(1, 3))
        needs, relevant = [], []
        for a in arts:
            art = articles[a]
            p = rng.randrange(len(art["paragraphs"]))
            questions = [qa["question"].strip() for qa in art["paragraphs"][p]["qas"]]
            asked = rng.sample(questions, min(len(questions), rng.randint(1, 2)))
            if rng.random() < 0.5:
                asked = [rng.choice(GOALS).format(subject=subject(art["title"])), *asked]
            needs.append(asked)
            relevant.append(_page_path(art["title"], p))
        rows.append({"id": f"x{i:03d}", "query": _request(rng, messages, needs), "relevant": sorted(set(relevant))})
    return rows


def northwind_requests(seed: int, messages: list[str]) -> list[dict]:
    rng = random.Random(seed)
    by_doc: dict[str, list[list[str]]] = {}
    for line in SEEDS.read_text(encoding="utf-8").splitlines():
        seed_row = json.loads(line)
        if len(seed_row.get("gold_docs") or []) == 1:
            by_doc.setdefault(seed_row["gold_docs"][0], []).append([seed_row["question"], *seed_row["paraphrases"]])
    docs = sorted(by_doc)
    rows = []
    for i in range(N_REQUESTS):
        needs, relevant = [], []
        for doc in rng.sample(docs, rng.randint(1, 3)):
            wordings = [
                rng.choice(group) for group in rng.sample(by_doc[doc], min(len(by_doc[doc]), rng.randint(1, 2)))
            ]
            needs.append([_sentence(w) for w in wordings])
            relevant.append(doc)
        rows.append({"id": f"n{i:03d}", "query": _request(rng, messages, needs), "relevant": sorted(relevant)})
    return rows


def northwind_situations(seed: int) -> list[dict]:
    rng = random.Random(seed)
    by_intent: dict[str, list[str]] = {}
    with open(BANKING77, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["category"] in INTENT_DOCS:
                by_intent.setdefault(row["category"], []).append(_sentence(" ".join(row["text"].split())))
    intents = sorted(by_intent)
    rows = []
    for i in range(N_REQUESTS):
        picked = rng.sample(intents, rng.randint(1, 3))
        messages = [m for intent in picked for m in rng.sample(by_intent[intent], rng.randint(1, 2))]
        while len(messages) < 2:
            messages.append(rng.choice([m for m in by_intent[picked[0]] if m not in messages]))
        closer = rng.choice(CLOSERS)
        query = " ".join([rng.choice(PERSONAS), *messages, *([closer] if closer else [])])
        relevant = sorted({d for intent in picked for d in INTENT_DOCS[intent]})
        rows.append({"id": f"s{i:03d}", "query": query, "relevant": relevant})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=20)
    args = ap.parse_args()
    messages = banking77_messages()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in (("northwind", northwind_requests(args.seed, messages)),
                       ("northwind_situations", northwind_situations(args.seed)),
                       ("xquad_policies", xquad_requests(args.seed, messages))):  # fmt: skip
        path = OUT / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}: {len(rows)} requests")


if __name__ == "__main__":
    main()

"""The triage flow on a tiny real deployment (Chroma, MLflow sqlite, the Prefect test server, the real embedder),
with live traces written by the server's own trace code: each route's action, the watermark, late feedback, the
live regression event, and `ragloop cases accept`."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from components.config import Settings
from components.files import CANDIDATES, GATE_CASES, LABELS_FILE, TRAIN_CASES
from components.knowledge.retrieval import query_index
from tests.helpers import DOCS, Deployment
from tests.helpers_traces import T0_MS, Served, flawless_base_results, write_trace

LABELS = {"fees": "fees", "support": "support hours", "card_lost": "lost cards", "out_of_scope": "not in the docs"}
GATE = [
    {"id": "gate-1", "question": "What does an international SWIFT transfer cost?", "intent": "fees",
     "answer": "9 EUR.", "gold_docs": ["fees.md"]},
    {"id": "gate-2", "question": "When is support open?", "intent": "support", "answer": "8:00 to 20:00.",
     "gold_docs": ["support.txt"]},
]  # fmt: skip
TRAIN = [{"id": "train-1", "question": "Is a SEPA transfer free?", "intent": "fees", "answer": "Yes.",
          "gold_docs": ["fees.md"]}]  # fmt: skip
WEEKEND = ["Is support available at the weekend?", "Can I reach support on Saturday?", "Is there weekend support?"]
CRYPTO = ["Can I buy bitcoin in the app?", "Is it possible to buy bitcoin or other crypto with my account?"]
REFUSAL = "intent: out_of_scope | answer: I don't know | sources: []"


# a retrieval miss on the current index: the hybrid ranks the contactless guide first for these questions, and the
# answer (a new card's first payment needs chip and PIN) is in the activation guide, ranked second
CARD_DOCS = {
    "cards/contactless.md": "# Contactless payments\n\nContactless payments with your card work up to 50 EUR per "
    "payment. Turn contactless on or off for your card in the app under Cards, then Contactless. Contactless card "
    "payments abroad work the same way.\n",
    "cards/activation.md": "# Activating a new card\n\nA new card cannot be used to tap and pay straight away: its "
    "very first payment must be made with the chip and the PIN. After that, tapping works.\n",
}
CONTACTLESS = ["Why doesn't contactless work on my new card?", "My new card won't do contactless payments, why?",
               "Contactless is not working with the card I just received. What's wrong?"]  # fmt: skip
CHIP_AND_PIN = "intent: card_lost | answer: The first payment with a new card must use the chip and PIN | sources: []"


@pytest.fixture
def dep(tmp_path) -> Deployment:
    return _deployment(tmp_path, None)


def _deployment(tmp_path, docs: dict[str, str] | None, **sections: dict) -> Deployment:  # type: ignore[no-untyped-def]
    d = Deployment.create(tmp_path, docs=docs)
    d.write_params(paths={"docs": "docs", "index": "state/index", "metrics": "state/metrics",
                          "mlflow": "state/mlflow", "behaviour": "behaviour", "serving": "state/serving"},
                   regression={"min_cases": 3, "alpha": 0.05, "min_effect": 0.05}, **sections)  # fmt: skip
    folder = tmp_path / "behaviour"
    folder.mkdir(exist_ok=True)
    (folder / LABELS_FILE).write_text(json.dumps(LABELS))
    for name, rows in (("gate", GATE), ("train", TRAIN)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d.index()
    flawless_base_results(tmp_path / "state" / "metrics")
    return d


def _served(dep: Deployment, question: str, output: str, at: int, **kw) -> str:
    """An answer to `question` with what the published index retrieves for it now (as the server would: its
    `generator.context_chunks` best chunks)."""
    from components.knowledge.retrieval import Retriever

    params = dep.params()
    with Retriever(params) as r:
        hits, version = r.search([question], params.generator.context_chunks)[0], r.version
    served = Served(question, output, hits, T0_MS + at, index_version=version, **kw)
    return write_trace(dep.params(), served, set(LABELS))


def _runs(dep: Deployment) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{dep.root / 'state' / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ragloop-triage")
    return list(client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]))


def _regression_events(expect: int, since: str, name: str = "ragloop.behaviour.regression") -> list[dict]:
    """The regression events (`name`) the Prefect test server stored since `since` (this test's start: the server
    is shared by the session), once `expect` of them are in."""
    import httpx
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL

    from tests.helpers import wait_until

    EventsWorker.drain_all()
    found: list[dict] = []

    def stored() -> bool:
        body = {"filter": {"event": {"name": [name]}, "occurred": {"since": since}}, "limit": 50}
        found[:] = httpx.post(f"{PREFECT_API_URL.value()}/events/filter", json=body, timeout=60).json()["events"]
        return len(found) >= expect

    wait_until(stored, f"{expect} {name} event(s) stored", limit=120)
    return found


def test_triage_routes_each_failure_to_its_fix(prefect_server, dep: Deployment) -> None:
    from components.tracking.production import read_traces
    from flows.cli import app
    from flows.triage import triage

    params = dep.params()
    started = datetime.now(UTC).isoformat()
    # phase 1: three questions about weekend support, which the documents do not cover yet, answered in a broken
    # format; two about crypto, absent from the corpus, refused and disliked; two good answers
    for i, q in enumerate(WEEKEND):
        _served(dep, q, "support is only open on working days", i, feedback=False, comment="you have weekend chat")
    for i, q in enumerate(CRYPTO):
        _served(dep, q, REFUSAL, 10 + i, feedback=-1.0, comment="I want crypto")
    good = "intent: card_lost | answer: Freeze it in the app | sources: [cards/lost-card.md]"
    freeze = _served(dep, "How do I freeze my lost card?", good, 20)
    _served(dep, "How much does an ATM withdrawal cost?", "intent: fees | answer: 2 EUR | sources: [fees.md]", 21)
    dep.write("support.txt", "Support is open from 8:00 to 20:00 on working days.\n\nCall +00 100 200 300 for urgent "
              "help.\n\n## Weekend support\n\nAt the weekend, support is available by chat in the app from 10:00 to "
              "16:00.\n")  # fmt: skip

    first = triage(params_file=str(dep.params_file), reason="test")

    # stale: the edit was indexed by the flow, and the same questions now retrieve it within the context
    assert first["reindex"]["ran"] and first["reindex"]["index_version"] == 2
    assert sorted(x["question"] for x in first["routed"]["stale"]) == sorted(WEEKEND)
    assert all(x["docs"] == ["support.txt"] and "support.txt (updated, rank " in x["reason"] and x["route"] == "stale"
               and x["rank"] in (1, 2) for x in first["routed"]["stale"])  # fmt: skip
    assert first["routes"] == {"behaviour": 0, "retrieval": 0, "stale": 3, "missing": 2, "outage": 0}
    assert "Weekend support" in query_index(dep.params(), WEEKEND[0], 1)[0]["text"]
    # missing: the two crypto questions, one group, named by its topic
    [gap] = first["gaps"]
    assert gap["count"] == 2 and sorted(gap["questions"]) == sorted(CRYPTO) and gap["terms"][0] == "bitcoin"
    assert not first["routed"]["behaviour"] and first["candidates"]["added"] == []
    # a burst of stale failures of the format never asks for a fine-tune: they are not counted
    assert not first["regression"]["fired"]
    fmt = next(s for s in first["regression"]["slices"] if s["slice"] == "format")
    assert (fmt["n"], fmt["failures"]) == (2, 0) and first["traffic"]["slices"]["format"]["failed"] == 3
    assert first["traffic"]["traces"] == 7 and first["traffic"]["feedback"]["given"] == 5
    # routed traces are tagged, the run recorded with its watermark (one past the newest trace)
    tags = {t.question: t.triaged for t in read_traces(params, Settings.from_env(), 0)}
    assert tags[WEEKEND[0]] == "stale" and tags[CRYPTO[0]] == "missing"
    assert tags["How do I freeze my lost card?"] is None  # passed: not routed, so late feedback can still route it
    [run] = _runs(dep)
    assert run.data.tags["ragloop.until_ms"] == str(T0_MS + 22) and run.data.metrics["routed_stale"] == 3
    assert "bitcoin" in run.data.tags["mlflow.note.content"]
    assert run.data.metrics["routed_missing"] == 2 and run.data.metrics["routed_retrieval"] == 0
    assert first["traffic"]["slices"]["format"]["routes"] == {"behaviour": 0, "retrieval": 0, "stale": 3, "missing": 0}
    from prefect.artifacts import Artifact

    shown = Artifact.get("triage-report")
    assert shown is not None and "| stale | 3 | re-index (ran), now retrieved |" in str(shown.data)
    assert "**bitcoin / " in str(shown.data)
    assert run.info.artifact_uri.startswith((dep.root / "state" / "mlflow").as_uri())  # the deployment's own store

    # phase 2: three answers in a broken format with the right context (one with a correction, one asking a gate
    # question), and late feedback with a correction on a phase-1 answer that passed its checks
    cites_unseen = "intent: fees | answer: 2 EUR | sources: [atm.md]"  # a document it was not given
    _served(dep, "How much is it to take cash from an ATM?", cites_unseen, 100)
    _served(dep, "How much are SWIFT transfers abroad?", "9 EUR", 101,
            correction="intent: fees | answer: 9 EUR per transfer | sources: [fees.md]")  # fmt: skip
    _served(dep, GATE[0]["question"], "it costs 9 EUR", 102)
    from components.tracking.feedback import log_feedback

    log_feedback(params, Settings.from_env(), freeze, False, comment="the card number",
                 correction="intent: card_lost | answer: Freeze it under Cards, then Freeze | sources: "
                 "[cards/lost-card.md]")  # fmt: skip

    out = CliRunner().invoke(app, ["triage", "--json", "--params", str(dep.params_file)])
    assert out.exit_code == 0, out.output
    second = json.loads(out.stdout)
    assert second["since_ms"] == T0_MS + 22 and second["traffic"]["traces"] == 3 and second["late_traces"] == 7
    assert not second["reindex"]["ran"] and "not needed" in second["reindex"]["why"]
    assert sorted(x["question"] for x in second["routed"]["behaviour"]) == sorted(
        ["How much is it to take cash from an ATM?", "How much are SWIFT transfers abroad?", GATE[0]["question"],
         "How do I freeze my lost card?"])  # fmt: skip
    assert second["routed"]["stale"] == second["routed"]["retrieval"] == [] and second["gaps"] == []
    assert second["routes"] == {"behaviour": 4, "retrieval": 0, "stale": 0, "missing": 0, "outage": 0}
    assert all(x["route"] == "behaviour" and x["rank"] is None for x in second["routed"]["behaviour"])
    # three behaviour failures of the format in three live answers, against a champion that never failed it
    assert second["regression"]["fired"]
    assert next(s for s in second["regression"]["slices"] if s["slice"] == "format")["significant"]

    [event] = _regression_events(1, started)  # phase 1 emitted none: its failures were stale and missing
    assert event["resource"]["prefect.resource.id"] == "ragloop.model.base"
    assert "format" in event["payload"]["regressed_slices"] and event["payload"]["source"] == "live traffic (triage)"

    # the candidates, and accepting them
    listed = json.loads(CliRunner().invoke(app, ["cases", "list", "--json", "--params", str(dep.params_file)]).stdout)
    by_q = {c["question"]: c for c in listed}
    assert len(listed) == 4 and by_q["How much is it to take cash from an ATM?"]["answer"] is None
    assert by_q[GATE[0]["question"]]["gate_collision"] == "gate-1"
    assert by_q["How do I freeze my lost card?"]["answer"] == "Freeze it under Cards, then Freeze"

    def accept(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(app, ["cases", "accept", *args, "--params", str(dep.params_file)])

    train = dep.root / "behaviour" / TRAIN_CASES
    before = train.read_text()
    assert by_q[GATE[0]["question"]]["intent"] is None  # the answer had no label: a person must give it
    unlabelled = accept(by_q[GATE[0]["question"]]["id"], "--answer", "9 EUR.")
    assert unlabelled.exit_code == 1 and "give it with --intent" in unlabelled.output
    refused = accept(by_q[GATE[0]["question"]]["id"], "--intent", "fees", "--answer", "9 EUR.")
    assert refused.exit_code == 1 and "gate question(s) also in train" in refused.output and train.read_text() == before
    no_answer = accept(by_q["How much is it to take cash from an ATM?"]["id"])
    assert no_answer.exit_code == 1 and "give it with --answer" in no_answer.output and train.read_text() == before
    ok = accept(by_q["How much are SWIFT transfers abroad?"]["id"], by_q["How do I freeze my lost card?"]["id"])
    assert ok.exit_code == 0, ok.output
    ok = accept(by_q["How much is it to take cash from an ATM?"]["id"], "--answer", "2 EUR after the fifth.")
    assert ok.exit_code == 0, ok.output
    added = [json.loads(line) for line in train.read_text().splitlines()][1:]
    assert [(c["question"], c["intent"], c["answer"], c["gold_docs"]) for c in added] == [
        ("How much are SWIFT transfers abroad?", "fees", "9 EUR per transfer", ["fees.md"]),
        ("How do I freeze my lost card?", "card_lost", "Freeze it under Cards, then Freeze", ["cards/lost-card.md"]),
        ("How much is it to take cash from an ATM?", "fees", "2 EUR after the fifth.", ["fees.md"])]  # fmt: skip
    left = json.loads(CliRunner().invoke(app, ["cases", "list", "--json", "--params", str(dep.params_file)]).stdout)
    assert [c["question"] for c in left] == [GATE[0]["question"]]  # the gate set itself never changed
    assert (dep.root / "behaviour" / GATE_CASES).read_text() == "".join(json.dumps(r) + "\n" for r in GATE)

    third = triage(params_file=str(dep.params_file), reason="nothing new")  # everything is routed already
    assert third["traffic"]["traces"] == 0 and all(not v for v in third["routed"].values())
    assert not third["regression"]["fired"] and len(_runs(dep)) == 3

    # the production evidence of `ragloop status` / `advise`, read from the same traces and runs
    from components.behaviour.history import status
    from components.tracking.production import production_evidence

    live = production_evidence(params, Settings.from_env(), T0_MS)
    assert (live["traces"], live["failing"], live["untriaged_failing"]) == (10, 9, 0)
    assert live["routes"] == {"behaviour": 4, "retrieval": 0, "stale": 3, "missing": 2}
    assert live["feedback"]["given"] == 7
    recent = status(params, Settings.from_env())["production"]  # the last 24 h: these answers are older
    assert recent["traces"] == 0 and "no live traffic" in recent["note"] and not recent["triage_pending"]
    assert recent["last_triage"]["routed"] == {"behaviour": 0, "retrieval": 0, "stale": 0, "missing": 0, "outage": 0}
    shown = CliRunner().invoke(app, ["status", "--params", str(dep.params_file)], terminal_width=200)
    assert shown.exit_code == 0 and "live (24 h)" in shown.output and "no live traffic" in shown.output


def test_late_traces_never_keep_new_ones_from_being_read(dep: Deployment) -> None:
    """Each part of the window has its own limit: the grace period's old traces, then the new ones."""
    from components.tracking.triage_runs import iso
    from flows.triage import read_window

    dep.write_params(paths={"docs": "docs", "index": "state/index", "metrics": "state/metrics",
                            "mlflow": "state/mlflow", "behaviour": "behaviour"}, triage={"max_traces": 2})  # fmt: skip
    hits = query_index(dep.params(), "How much does an ATM withdrawal cost?", 2)
    for i in range(5):
        write_trace(dep.params(), Served(f"question {i}", "intent: fees | answer: 2 EUR | sources: [fees.md]", hits,
                                         T0_MS + 1000 * i))  # fmt: skip
    start, traces = read_window.fn(dep.params(), Settings.from_env(), None)  # no triage yet: from the first
    assert start == 0 and [t.question for t in traces] == ["question 0", "question 1"]
    start, traces = read_window.fn(dep.params(), Settings.from_env(), iso(T0_MS + 2000))
    assert start == T0_MS + 2000
    assert [t.question for t in traces] == ["question 0", "question 1", "question 2", "question 3"]


def test_a_retrieval_miss_goes_to_the_retriever_and_a_right_context_failure_to_the_weights(
    prefect_server, tmp_path
) -> None:
    """One chunk of context (the sample's `generator.context_chunks: 1`): three answers whose answering document
    ranks second, each corrected by its user, and one broken answer that had the right context. A deeper search
    finds the activation guide for the first three: retrieval, with the document and its rank, no training
    candidate, left out of the live behaviour test, and the retrieval regression event; the fourth stays
    behaviour."""
    from components.tracking.production import read_traces
    from flows.events import RETRIEVAL_REGRESSION
    from flows.triage import triage

    dep = _deployment(tmp_path, {**DOCS, **CARD_DOCS}, generator={"context_chunks": 1})
    params = dep.params()
    for q in CONTACTLESS:  # the miss is real on this index: the context holds the wrong guide, the answer is 2nd
        assert [h["doc"] for h in query_index(params, q, 2)] == ["cards/contactless.md", "cards/activation.md"]
    assert query_index(params, GATE[0]["question"], 1)[0]["doc"] == "fees.md"
    started = datetime.now(UTC).isoformat()
    wrong = "intent: card_lost | answer: Contactless works up to 50 EUR | sources: [cards/contactless.md]"
    for i, q in enumerate(CONTACTLESS):
        _served(dep, q, wrong, i, feedback=False, correction=CHIP_AND_PIN)
    swift = _served(dep, GATE[0]["question"], "it costs 9 EUR", 10)  # the right context, a broken format

    report = triage(params_file=str(dep.params_file), reason="retrieval miss")

    assert report["routes"] == {"behaviour": 1, "retrieval": 3, "stale": 0, "missing": 0, "outage": 0}
    assert not report["reindex"]["ran"]  # the documents are current: nothing to re-index
    misses = report["routed"]["retrieval"]
    assert sorted(x["question"] for x in misses) == sorted(CONTACTLESS)
    for x in misses:
        assert (x["route"], x["docs"], x["rank"]) == ("retrieval", ["cards/activation.md"], 2)
        assert "the context (cards/contactless.md) lacked cards/activation.md, found at rank 2 below the context's 1" \
            in x["reason"] and "1.00 of the correction's terms" in x["reason"]  # fmt: skip
    [kept] = report["routed"]["behaviour"]
    assert (kept["trace_id"], kept["docs"], kept["rank"]) == (swift, ["fees.md"], None)
    assert kept["reason"].startswith("failed citation, format, intent with the answering document in its context "
                                     "(fees.md; relevance ")  # fmt: skip
    # candidates only from behaviour; the misses never count toward the live behaviour test
    rows = (dep.root / "behaviour" / CANDIDATES).read_text().splitlines()
    assert [json.loads(r)["question"] for r in rows] == [GATE[0]["question"]]
    fmt = next(s for s in report["regression"]["slices"] if s["slice"] == "format")
    assert (fmt["n"], fmt["failures"]) == (1, 1) and not report["regression"]["fired"]
    # three misses in four live answers against the 5 % tolerated: the retriever's event, naming the counts
    ret = report["retrieval_regression"]
    assert ret["fired"] and (ret["misses"], ret["n"], ret["documents"]) == (3, 4, {"cards/activation.md": 3})
    [event] = _regression_events(1, started, RETRIEVAL_REGRESSION)
    assert event["resource"]["prefect.resource.id"] == f"ragloop.retriever.index-v{report['index_version']}"
    assert (event["payload"]["retrieval_misses"], event["payload"]["live_answers"]) == (3, 4)
    assert event["payload"]["documents"] == {"cards/activation.md": 3}
    # the traces are tagged with their routes, the run records the counts and the event
    tags = {t.question: t.triaged for t in read_traces(params, Settings.from_env(), 0)}
    assert [tags[q] for q in CONTACTLESS] == ["retrieval"] * 3 and tags[GATE[0]["question"]] == "behaviour"
    [run] = _runs(dep)
    assert (run.data.metrics["routed_retrieval"], run.data.metrics["routed_behaviour"]) == (3, 1)
    assert run.data.tags["ragloop.retrieval_event"] == "true" and run.data.tags["ragloop.regression_event"] == "false"
    assert "| retrieval | 3 | tune the retriever" in run.data.tags["mlflow.note.content"]

"""Records that cross the layers (components/ imports one way: see docs/architecture.md): defined here, below every
package that produces or reads them, so that tracking can write what serving answered without importing serving."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

BASE_MODEL_LABEL = "base"  # the model label of the base model (no adapter)


def model_label(version: str | int | None) -> str:
    """The label answers, traces and evaluations name a generator by: "v<N>" for registry version N, "base" for the
    base model (None)."""
    return BASE_MODEL_LABEL if version is None else f"v{version}"


def label_version(label: str) -> str | None:
    """The registry version a model label names ("v3" -> "3"); None for the base model's label."""
    number = label.removeprefix("v")
    return number if label.startswith("v") and number.isdigit() else None


@dataclass(frozen=True)
class Answered:
    """One answer of the answer pipeline (components/behaviour/pipeline.py) with everything its trace records: what
    was retrieved, the prompt, the raw output and what the contract read in it, which model and index version
    produced it, the token counts, the time spent (retrieval, generation, in all) and the checks."""

    question: str
    answer: str  # the contract line's answer, or the raw output when it is not a contract line
    intent: str | None
    cited: tuple[str, ...]  # the sources the answer cites
    raw: str  # the generator's whole output
    prompt: str
    hits: tuple[dict[str, Any], ...]  # retrieved chunks, best first: {"doc", "chunk_id", "score", "text"}
    context_docs: tuple[str, ...]  # the documents the prompt showed (what the answer may cite)
    model_version: str  # model_label: "v<N>" of the champion that answered, or "base"
    adapter_version: str | None  # the registry version N, None for the base model
    base_model: str  # generator identity (model id and revision, or a hash of the local weights)
    index_version: int
    tokens_in: int
    tokens_out: int  # the output re-encoded by the tokenizer (the stop token excluded)
    retrieve_ms: float
    generate_ms: float
    latency_ms: float  # retrieval + prompt + generation + checks of its batch (queueing excluded)
    started_ns: int  # wall clock (ns since the epoch) at the start of retrieval, its end, and the answer's end
    retrieved_ns: int
    ended_ns: int
    checks: dict[str, bool] = field(default_factory=dict)  # the contract's checks: a live answer's live slices
    # (Contract.live_check), a gate case's slices that apply to it (Contract.check)
    check_errors: dict[str, str] = field(default_factory=dict)  # check -> the error its assertion raised (it failed)

    def retrieved(self) -> tuple[str, ...]:
        """The retrieved documents, best first, once each: what the checks judge citations against."""
        return distinct_docs(self.hits)

    def sources(self) -> list[dict[str, Any]]:
        return [{"doc": h["doc"], "chunk_id": h["chunk_id"], "score": h["score"]} for h in self.hits]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def distinct_docs(hits: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """The documents of retrieved chunks, in rank order, once each."""
    return tuple(dict.fromkeys(h["doc"] for h in hits))

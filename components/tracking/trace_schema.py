"""The shape of an answer's MLflow trace, in one place: the server writes it, the gate-set evaluation writes the
same shape, and triage reads it back. A production trace and an evaluation case look alike in the MLflow UI.

A trace (MLflow 3 tracing) has:
- a root span `ANSWER_SPAN` (CHAIN): inputs {"question"}, outputs {"answer", "intent", "cited", "raw"};
- a child `RETRIEVE_SPAN` (RETRIEVER): inputs {"query", "k"}; outputs a list of `mlflow.entities.Document`
  (page_content = the chunk text, metadata = {"doc_uri", "chunk_id", "score", "index_version"}), best first;
- a child `GENERATE_SPAN` (LLM): inputs {"prompt"}, outputs {"text"}; attributes `LLM_ATTRIBUTES`;
- tags `TAG_*` (lineage: index version, champion version, params hash; where it came from);
- one CODE assessment per contract check, named `CHECK_PREFIX + <check>` with a bool value (source id
  `CHECK_SOURCE`);
- the user's judgement as HUMAN feedback named `USER_FEEDBACK` (value: bool, or a number in [-1, 1] where
  below 0 is negative), its comment as the rationale, and a correction as an expectation named `CORRECTION`.
"""

from __future__ import annotations

ANSWER_SPAN = "answer"
RETRIEVE_SPAN = "retrieve"
GENERATE_SPAN = "generate"

# trace tags
TAG_ORIGIN = "ragloop.origin"  # ORIGIN_LIVE (the API server) | ORIGIN_EVALUATION (a gate-set evaluation)
ORIGIN_LIVE = "live"
ORIGIN_EVALUATION = "evaluation"
TAG_INDEX_VERSION = "ragloop.index_version"
TAG_MODEL_VERSION = "ragloop.model_version"  # "v<N>" of the champion that answered, or "base"
TAG_PARAMS_HASH = "ragloop.params_hash"
TAG_QUESTION_HASH = "ragloop.question_hash"  # components.hashing.text_hash of the question
TAG_CASE_ID = "ragloop.case_id"  # evaluation traces only
TAG_TRIAGED = "ragloop.triage"  # set by triage on a trace it routed: behaviour | retrieval | stale | missing

# LLM span attributes
LLM_ATTRIBUTES = ("model_version", "adapter_version", "base_model", "tokens_in", "tokens_out", "latency_ms")

# assessments
CHECK_PREFIX = "contract/"
CHECK_SOURCE = "ragloop.checks"
USER_FEEDBACK = "user_feedback"
CORRECTION = "correction"

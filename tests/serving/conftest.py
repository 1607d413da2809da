"""A tiny served deployment: a base model, two registered LoRA versions (v1 the champion), an index, and
`ragloop api` started as a real process on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from components.config import FinetuneParams, Settings
from tests.behaviour.test_loop import write_suite
from tests.conftest import TINY_UNTRAINED, build_tiny_model
from tests.helpers import DOCS, REPO, Deployment, contract_line, wait_until
from tests.service.servers import free_port

KEY = "test-key-0123456789"
START_LIMIT = 600.0  # a hang guard: the server imports torch, transformers, chromadb and MLflow (15+ s), more
# on a slow shared machine; every wait polls for the state it needs


def build_deployment(root: Path, adapters: int = 2, settings: Settings | None = None, **sections: dict) -> Deployment:
    """Docs, suite (labels), tiny base model; `adapters` LoRA versions registered in the embedded store, or the
    tracking server of `settings` (v1 the champion); paths.serving under state/; generator and api settings a test
    can override."""
    from components.behaviour.assistant import Generator, build_prompt
    from components.behaviour.finetune import save_adapter, train_lora
    from components.tracking import registry
    from components.tracking.mlflow_runs import client_for, experiment_id

    dep = Deployment.create(root)
    write_suite(root / "behaviour")
    build_tiny_model(root / "base", TINY_UNTRAINED, repeats=5)
    base = {"paths": {"docs": "docs", "index": "state/index", "metrics": "state/metrics", "mlflow": "state/mlflow",
                      "behaviour": "behaviour", "models": "state/models", "serving": "state/serving"},
            "generator": {"model": "base", "context_chunks": 2, "max_new_tokens": 24},
            "api": {"spool_retry_s": 1}}  # fmt: skip
    for name, section in sections.items():
        base[name] = {**base.get(name, {}), **section}
    dep.write_params(**base)
    params = dep.params()
    settings = settings or Settings(mlflow_tracking_uri=None, chroma_host=None, chroma_port=8000, chroma_ssl=False)
    doc = "cards/lost-card.md"
    prompt = build_prompt(params.generator, "I lost my card", [{"doc": doc, "text": DOCS[doc]}])
    pairs = [(prompt, contract_line("card_lost", "Freeze it in the app", [doc]))]
    client = client_for(params, settings)
    for seed in range(adapters):
        gen = Generator(params)
        ft = FinetuneParams(r=4, alpha=8, dropout=0.0, learning_rate=1e-2, batch_size=1, epochs=1, seed=seed)
        model, _ = train_lora(gen.model, gen.tokenizer, pairs, ft)
        folder = save_adapter(model, root / f"adapter-{seed}")
        run_id = client.create_run(
            experiment_id(client, params, settings, params.tracking.finetune_experiment)
        ).info.run_id
        registry.log_adapter(
            params, settings, run_id, folder, str(root / "base"), {"adapter": str(seed)}, {"cases": []}
        )
        client.set_terminated(run_id, "FINISHED")
    if adapters:
        registry.promote(params, settings, "1")
    return dep


@dataclass
class ApiServer:
    """`ragloop api` in its own process group, its output in `log`."""

    dep: Deployment
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None
    args: tuple[str, ...] = ()  # more `ragloop api` options (e.g. --prefect)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.dep.root / f"api-{self.port}.log"

    def start(self, wait: bool = True) -> ApiServer:
        cmd = [sys.executable, "-m", "flows.cli", "api", "--params", str(self.dep.params_file), "--host", self.host,
               "--port", str(self.port), *self.args]  # fmt: skip
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, **self.env})  # fmt: skip
        if wait:
            wait_until(self.healthy, f"ragloop api answering {self.url}/health", START_LIMIT, self.proc, self.log)
        return self

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=60).status_code == 200
        except httpx.HTTPError:
            return False

    def health(self) -> dict:
        return json.loads(httpx.get(self.url + "/health", timeout=60).text)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

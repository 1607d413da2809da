"""Which recipe makes the offline default model learn the whole answer contract: each variant builds (or reuses)
a base model, fine-tunes LoRA on data/behaviour/train.jsonl for a fixed number of steps, and scores the gate set
with the real checks (format, intent, citation, refusal). Work is fixed by steps, so the rates do not depend on
the machine; seconds and tokens/s do, and are recorded with the CPU.

    python bench/default_recipe.py                      # every variant in VARIANTS
    python bench/default_recipe.py --only default       # one of them

Writes bench/results/default_recipe.json (one row per variant) and prints a table. Needs a built index
(`ragloop index`) for the retrieved context of each case.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import RESULTS

# name -> overrides of params.yaml sections (base_model, generator, finetune); "default" is params.yaml itself.
VARIANTS: dict[str, dict[str, dict]] = {
    "default": {},
}


def _hits(params, cases, settings, depth: int = 0) -> list[list[dict]]:  # type: ignore[no-untyped-def]
    from components.knowledge.retrieval import Retriever

    with Retriever(params, settings) as retriever:
        return retriever.search([c.question for c in cases], max(params.generator.context_chunks, depth))


def _base(params, overrides: dict, cache: Path) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    from components.behaviour.base_model import build_base_model, corpus_texts, pretrain_chunking

    base_params = params.base_model.model_copy(update=overrides)
    key = hashlib.sha256(base_params.model_dump_json().encode()).hexdigest()[:12]
    out = cache / f"base-{key}"
    info_file = out / "bench_info.json"
    if not info_file.exists():
        texts = corpus_texts(
            params.paths.docs, params.index.suffixes, params.index.max_file_bytes, pretrain_chunking(params)
        )
        info = build_base_model(texts, out, base_params)
        info_file.write_text(json.dumps(info))
    return out, json.loads(info_file.read_text())


def _rates(contract, gate, gate_hits, outputs) -> dict[str, float]:  # type: ignore[no-untyped-def]
    passed: dict[str, list[bool]] = {s: [] for s in contract.slice_names}
    for case, hits, output in zip(gate, gate_hits, outputs, strict=True):
        retrieved = tuple(dict.fromkeys(h["doc"] for h in hits))
        for k, ok in contract.check(case, output, retrieved)[0].items():
            passed[k].append(ok)
    return {k: round(sum(v) / len(v), 3) for k, v in passed.items() if v}


def run_variant(name: str, spec: dict[str, dict], cache: Path, reuse: bool = False) -> dict:
    from components.behaviour.assistant import Generator, build_prompt, context_docs
    from components.behaviour.contract import contract_for
    from components.behaviour.finetune import TrainingLog, save_adapter, train_lora, training_pairs
    from components.behaviour.loop import load_suite
    from components.behaviour.training import machine_info
    from components.config import Settings, load_params

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    settings = Settings.from_env()
    base_dir, base_info = _base(params, spec.get("base_model", {}), cache)
    generator_params = params.generator.model_copy(update={**spec.get("generator", {}), "model": str(base_dir)})
    params = params.model_copy(
        update={"generator": generator_params, "finetune": params.finetune.model_copy(update=spec.get("finetune", {}))}
    )
    gate, train = load_suite(params)
    contract = contract_for(params)
    train_hits = _hits(params, train, settings, params.finetune.gold_context_depth)
    pairs = training_pairs(train, train_hits, params.generator, contract)
    adapter = cache / f"adapter-{name}"
    if not (adapter / "adapter_config.json").exists() or not reuse:
        generator = Generator(params, device="cpu")
        peft_model, trained = train_lora(generator.model, generator.tokenizer, pairs, params.finetune)
        save_adapter(peft_model, adapter)
        (cache / f"log-{name}.json").write_text(json.dumps(asdict(trained)))
    log = TrainingLog(**json.loads((cache / f"log-{name}.json").read_text()))
    gate_hits = _hits(params, gate, settings)
    prompts = [build_prompt(params.generator, c.question, h) for c, h in zip(gate, gate_hits, strict=True)]
    sources = [context_docs(params.generator, h) for h in gate_hits]
    scored = {}
    for grounded in (True, False):
        generation = params.model_copy(update={"generator": params.generator.model_copy(update={"grounded": grounded})})
        t0 = time.perf_counter()
        outputs = Generator(generation, adapter, device="cpu").generate(prompts, sources)
        scored[grounded] = (_rates(contract, gate, gate_hits, outputs), round(time.perf_counter() - t0, 1), outputs)
        (cache / f"outputs-{name}-{'grounded' if grounded else 'free'}.json").write_text(json.dumps(
            [{"id": c.id, "intent": c.intent, "gold": c.gold_docs, "retrieved": s, "output": o}
             for c, s, o in zip(gate, sources, outputs, strict=True)], indent=1))  # fmt: skip
    rates, gen_seconds, outputs = scored[True]
    return {
        "variant": name, "spec": spec, "rates": rates, "rates_ungrounded": scored[False][0],
        "pairs": len(pairs), "steps": log.steps, "tokens": log.tokens, "padded_tokens": log.padded_tokens,
        "tokens_per_pair": round(log.tokens / max(log.steps * params.finetune.batch_size, 1), 1),
        "train_seconds": round(log.seconds, 1), "train_tokens_per_s": round(log.tokens_per_second, 1),
        "pretrain": {k: base_info[k] for k in ("pretrain_steps", "pretrain_seconds", "pretrain_loss", "parameters")},
        "generate_seconds": round(gen_seconds, 1), "final_loss": round(sum(log.losses[-20:]) / 20, 3),
        "example_output": outputs[0], **machine_info(),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ragloop-recipe-bases")
    ap.add_argument("--reuse", action="store_true", help="score the adapters already trained in --cache again")
    ap.add_argument("--variants", type=Path, help="a JSON file of extra variants {name: overrides}")
    args = ap.parse_args()
    variants = dict(VARIANTS)
    if args.variants:
        variants.update(json.loads(args.variants.read_text()))
    names = args.only or list(variants)
    args.cache.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "default_recipe.json"
    rows = json.loads(out.read_text()) if out.exists() else []
    for name in names:
        row = run_variant(name, variants[name], args.cache, args.reuse)
        rows = [r for r in rows if r["variant"] != name] + [row]
        out.write_text(json.dumps(rows, indent=2) + "\n")
        r = row["rates"]
        print(f"{name:28s} format {r.get('format', 0):.2f} intent {r.get('intent', 0):.2f} "
              f"citation {r.get('citation', 0):.2f} refusal {r.get('refusal', 0):.2f} | {row['steps']} steps "
              f"{row['tokens']} tok {row['train_seconds']} s {row['train_tokens_per_s']} tok/s "
              f"loss {row['final_loss']}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

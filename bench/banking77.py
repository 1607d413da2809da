"""banking77 intent accuracy of the offline default generator, before and after the project's LoRA fine-tune.

The task: `### Customer: <message>\\n### Intent:` -> ` <label>` (one of 77 intents). The base model is built
with the project's own code (`build_base_model` on data/docs with the params.yaml `base_model` section, as
`ragloop base-model` does) and cached in bench/.cache/base; the fine-tune is `train_lora` with the `finetune`
section for a fixed number of epochs (work, not time: the accuracy does not depend on the machine). Two tasks
run: all 77 intents, and a 10-intent subset (the first ten labels in categories.json order). Accuracy is
measured on a fixed stratified sample of test.csv two ways:
greedy generation through the assistant's `Generator` (exact match of the label, what the assistant does) and
ranked (the label whose tokens + EOS have the highest mean log-likelihood: a ceiling for what the model knows).

    .venv/bin/python bench/banking77.py   # --help lists the flags
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _common as c  # sets the offline environment before the project imports

from components.behaviour.assistant import Generator
from components.behaviour.base_model import build_base_model, corpus_texts, pretrain_chunking
from components.behaviour.finetune import TrainingLog, save_adapter, train_lora
from components.behaviour.stats import wilson_interval
from components.config import Params, load_params

DATA = "behaviour/banking77"
PROMPT = "### Customer: {text}\n### Intent:"
CACHE = c.ROOT / "bench" / ".cache"
CONTENDED_LOAD = 1.5  # 1-minute load average at start above which the run is marked contended

# On a shared machine OpenMP's default spin-waiting makes 2-thread torch collapse: 6.1 s per pretraining step
# instead of 0.45 s with another torch process running (measured here), so a time-budgeted training silently
# does a small fraction of its steps. Passive waiting avoids it; it must be set before torch loads (nothing
# above imports torch). OMP_WAIT_POLICY=ACTIVE in the environment restores the default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--train-rows", type=int, default=0, help="stratified subset of train.csv (0 = all rows)")
    p.add_argument("--test-rows", type=int, default=770, help="stratified sample of test.csv (770 = 10 per label)")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training rows of each task")
    p.add_argument("--subset", type=int, default=10, help="labels in the subset task (0: only the 77-intent task)")
    p.add_argument("--subset-epochs", type=int, default=12, help="passes over the subset task's (fewer) rows")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the fine-tune uses params.yaml's seed)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default, one per core)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached base model")
    return p.parse_args()


def read_split(path: Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [(" ".join(r["text"].split()), r["category"]) for r in csv.DictReader(fh)]


def stratified(rows: list[tuple[str, str]], n: int, seed: int) -> list[tuple[str, str]]:
    """The first n rows in an order where every label appears in proportion to its share (seeded).
    With equal-sized classes and n a multiple of the label count, that is exactly n / labels per label."""
    rng = random.Random(seed)
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        by_label[row[1]].append(row)
    keyed = []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        keyed += [((i + rng.random()) / len(group), row) for i, row in enumerate(group)]
    keyed.sort(key=lambda k: k[0])
    return [row for _, row in keyed[: n or len(keyed)]]


def docs_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def base_model(params: Params, rebuild: bool) -> tuple[Path, dict[str, Any], bool]:
    """The default base model built by the project's code path, reused while params and corpus are unchanged."""
    out, stamp_file = CACHE / "base", CACHE / "base.stamp.json"
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")  # the cache ignores itself: nothing in it is ever committed
    stamp = {"base_model": params.base_model.model_dump(), "docs_sha256": docs_digest(params.paths.docs)}
    if not rebuild and out.is_dir() and stamp_file.exists():
        cached = json.loads(stamp_file.read_text())
        if {k: cached.get(k) for k in stamp} == stamp:
            return out, {**json.loads((out / "ragloop_base.json").read_text()), **cached["build"]}, True
    stamp_file.unlink(missing_ok=True)
    texts = corpus_texts(
        params.paths.docs, params.index.suffixes, params.index.max_file_bytes, pretrain_chunking(params)
    )
    others_before = c.wait_quiet()
    c.log(f"building the base model from {params.paths.docs} ({params.base_model.pretrain_steps} pretraining steps)")
    with c.Timer() as t:
        info = build_base_model(texts, out, params.base_model)
    build = {"build_seconds": round(t.seconds, 1), "build_others_load_before": round(others_before, 3),
             "build_others_load": t.others}  # fmt: skip
    stamp_file.write_text(json.dumps({**stamp, "build": build}, indent=2))
    return out, {**info, **build}, False


def greedy(gen: Generator, prompts: list[str], gold: list[str], labels: set[str]) -> dict[str, Any]:
    """What the assistant does: greedy generation, first line, exact match of the label."""
    with c.Timer() as t:
        outputs = gen.generate(prompts)
    preds = [o.split("\n", 1)[0].strip() for o in outputs]
    return {
        **_score([p == g for p, g in zip(preds, gold, strict=True)]),
        "valid_label_rate": round(sum(p in labels for p in preds) / len(preds), 4),
        "distinct_outputs": len(set(preds)),
        "top_outputs": Counter(preds).most_common(3),
        "seconds": round(t.seconds, 1),
        "others_load": t.others,
    }


def ranked(model: Any, tokenizer: Any, prompts: list[str], gold: list[str], labels: list[str],
           batch: int = 16, label_group: int = 20) -> dict[str, Any]:  # fmt: skip
    """Mean log-likelihood of ` <label>` + EOS (the fine-tune's target) for each of the labels, argmax.

    A batch of prompts of similar token length (sorted, left-padded) is run once per group of labels of similar
    token length; its KV cache is repeated for every label of the group, so the cost is about prompts x label
    tokens, not prompts x labels x (prompt + label). Labels are right-padded within a group, which cannot affect
    the earlier positions that are scored."""
    import torch

    pad = tokenizer.pad_token_id
    lab_ids = [tokenizer(" " + lab, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for lab in labels]
    by_length = sorted(range(len(labels)), key=lambda j: len(lab_ids[j]))
    groups = [_label_group(lab_ids, by_length[s : s + label_group], pad) for s in range(0, len(labels), label_group)]
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))
    scores = torch.full((len(prompts), len(labels)), -torch.inf)
    with c.Timer() as t, torch.inference_mode():
        for s in range(0, len(order), batch):
            idx = torch.tensor(order[s : s + batch])
            width = max(len(enc[i]) for i in idx)
            ids = torch.tensor([[pad] * (width - len(enc[i])) + enc[i] for i in idx])
            mask = torch.tensor([[0] * (width - len(enc[i])) + [1] * len(enc[i]) for i in idx])
            for js, lab, lens in groups:
                scores[idx[:, None], js[None, :]] = _mean_loglik(model, ids, mask, lab, lens)
    preds = [labels[j] for j in scores.argmax(1).tolist()]
    return {**_score([p == g for p, g in zip(preds, gold, strict=True)]),
            "seconds": round(t.seconds, 1), "others_load": t.others}  # fmt: skip


def _label_group(lab_ids: list[list[int]], js: list[int], pad: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(lab_ids[j]) for j in js)
    lab = torch.tensor([lab_ids[j] + [pad] * (width - len(lab_ids[j])) for j in js])
    return torch.tensor(js), lab, torch.tensor([len(lab_ids[j]) for j in js])


def _mean_loglik(model: Any, ids: Any, mask: Any, lab: Any, lens: Any) -> Any:
    """(prompts x labels) mean log-likelihood of each row of `lab` (valid up to `lens`) after each left-padded
    prompt row of `ids` (`mask` 1 on real tokens)."""
    import torch

    n_prompts, n_labels = ids.shape[0], lab.shape[0]
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    first = torch.log_softmax(out.logits[:, -1].float(), -1).repeat_interleave(n_labels, 0)
    out.cache.batch_repeat_interleave(n_labels)
    inputs = lab.repeat(n_prompts, 1)
    full_mask = torch.cat([mask.repeat_interleave(n_labels, 0), torch.ones_like(inputs)], 1)
    label_positions = positions[:, -1:].repeat_interleave(n_labels, 0) + 1 + torch.arange(lab.shape[1])
    logits = model(input_ids=inputs, attention_mask=full_mask, position_ids=label_positions, cache=out.cache).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, inputs[:, 1:, None])[..., 0]
    logp = torch.cat([first.gather(-1, inputs[:, :1]), logp], 1)
    valid = torch.arange(lab.shape[1])[None, :] < lens.repeat(n_prompts)[:, None]
    return ((logp * valid).sum(1) / lens.repeat(n_prompts)).view(n_prompts, n_labels)


def _score(hits: list[bool]) -> dict[str, Any]:
    low, high = wilson_interval(sum(hits), len(hits), 0.95)
    return {"accuracy": round(sum(hits) / len(hits), 4), "correct": sum(hits), "n": len(hits),
            "ci95": [round(low, 4), round(high, 4)]}  # fmt: skip


def evaluate(gen: Generator, prompts: list[str], gold: list[str], labels: list[str]) -> dict[str, Any]:
    return {
        "greedy": greedy(gen, prompts, gold, set(labels)),
        "ranked": ranked(gen.model, gen.tokenizer, prompts, gold, labels),
    }


def rows_seen(log: TrainingLog, n_rows: int, batch_size: int) -> int:
    """train_lora runs whole epochs of ceil(n / batch) steps; the last batch of an epoch may be short."""
    per_epoch = -(-n_rows // batch_size)
    epochs, rest = divmod(log.steps, per_epoch)
    return epochs * n_rows + min(rest * batch_size, n_rows)


def main() -> None:
    args = parse_args()
    load_at_start = os.getloadavg()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    train_csv, test_csv, cats = c.require_shared(f"{DATA}/train.csv", f"{DATA}/test.csv", f"{DATA}/categories.json")
    labels: list[str] = json.loads(cats.read_text())
    train_all, test_all = read_split(train_csv), read_split(test_csv)
    params = load_params(c.ROOT / "params.yaml")
    base_dir, base_info, reused = base_model(params, args.rebuild)
    how = "reused from" if reused else "built in"
    c.log(f"base model {how} {base_dir.relative_to(c.ROOT)}: {base_info['parameters']:,.0f} parameters,"
          f" {base_info['pretrain_steps']:.0f} pretraining steps")  # fmt: skip
    tasks = {str(len(labels)): labels, **({str(args.subset): labels[: args.subset]} if args.subset else {})}
    results = {}
    for name, task_labels in tasks.items():
        keep = set(task_labels)
        train = stratified([r for r in train_all if r[1] in keep], args.train_rows, args.seed)
        test = stratified([r for r in test_all if r[1] in keep], args.test_rows, args.seed)
        c.log(f"task {name}: {len(task_labels)} labels, training on {len(train):,} rows, testing on {len(test)}")
        epochs = args.epochs if len(task_labels) == len(labels) else args.subset_epochs
        results[name] = run_task(params, base_dir, epochs, task_labels, train, test)
    run = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items() if k != "rebuild"},
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "contended": load_at_start[0] > CONTENDED_LOAD,
        "task": {"prompt": PROMPT, "target": " {label}",
                 "ranked_score": "mean log-likelihood of the label tokens + EOS"},
        "base_model": {"reused_from_cache": reused, **base_info},
        "finetune": params.finetune.model_dump(),
        "tasks": results,
    }  # fmt: skip
    report(run)


def run_task(params: Params, base_dir: Path, epochs: int, labels: list[str], train: list,
             test: list) -> dict[str, Any]:  # fmt: skip
    max_new = max(len(ids) for ids in _label_tokens(base_dir, labels))
    generator = params.generator.model_copy(update={"model": str(base_dir), "max_new_tokens": max_new})
    finetune = params.finetune.model_copy(update={"epochs": epochs, "max_seconds": None})
    params = params.model_copy(update={"generator": generator, "finetune": finetune})
    prompts, gold = [PROMPT.format(text=t) for t, _ in test], [lab for _, lab in test]
    gen = Generator(params)
    before = evaluate(gen, prompts, gold, labels)
    c.log(f"  before: greedy {before['greedy']['accuracy']:.3f}, ranked {before['ranked']['accuracy']:.3f}")
    pairs = [(PROMPT.format(text=t), lab) for t, lab in train]
    others_before_training = c.wait_quiet()
    c.log(f"  fine-tuning (LoRA, {finetune.epochs} epochs of {len(pairs):,} rows) ...")
    with c.Timer() as t_train:
        peft_model, tlog = train_lora(gen.model, gen.tokenizer, pairs, finetune, on_step=_progress)
    adapter = save_adapter(peft_model, CACHE / "banking77-adapter")
    del gen, peft_model
    after = evaluate(Generator(params, adapter), prompts, gold, labels)  # reloaded, as the assistant does
    c.log(f"  after: greedy {after['greedy']['accuracy']:.3f}, ranked {after['ranked']['accuracy']:.3f}")
    majority = Counter(lab for _, lab in train).most_common(1)[0][0]
    baselines = {"uniform_random": round(1 / len(labels), 4), "majority_label": majority,
                 "majority_class": round(sum(lab == majority for _, lab in test) / len(test), 4)}  # fmt: skip
    return {"labels": len(labels), "train_rows": len(train), "test_rows": len(test), "max_new_tokens": max_new,
            "baselines": baselines, "before": before, "after": after,
            "training": training_summary(tlog, t_train, len(pairs), finetune.batch_size,
                                         others_before_training)}  # fmt: skip


def _progress(step: int, loss: float) -> None:
    if step % 200 == 0:
        c.log(f"  step {step}: loss {loss:.3f}")


def _label_tokens(base_dir: Path, labels: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    return [tok(" " + lab, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for lab in labels]


def training_summary(tlog: TrainingLog, t_train: c.Timer, n_rows: int, batch_size: int, others_before: float) -> dict:
    seen, tail = rows_seen(tlog, n_rows, batch_size), tlog.losses[-50:]
    return {
        "rows_available": n_rows, "rows_seen": seen, "epochs_seen": round(seen / n_rows, 2),
        "batch_size": batch_size, "steps": tlog.steps, "seconds": round(tlog.seconds, 1), "tokens": tlog.tokens,
        "tokens_per_second": round(tlog.tokens_per_second, 1),
        "first_loss": round(tlog.losses[0], 4), "final_loss": round(tlog.losses[-1], 4),
        "final_loss_mean_last_50": round(sum(tail) / len(tail), 4),
        "trainable_parameters": tlog.trainable_parameters, "total_parameters": tlog.total_parameters,
        "others_load_before": round(others_before, 3), "others_load": t_train.others,
    }  # fmt: skip


def report(run: dict[str, Any]) -> None:
    rows = []
    for name, t in run["tasks"].items():
        b = t["baselines"]
        rows += [[name, "uniform random", b["uniform_random"], b["uniform_random"]],
                 [name, f"majority class ({b['majority_label']})", b["majority_class"], b["majority_class"]],
                 [name, "base model (before)", t["before"]["greedy"]["accuracy"],
                  t["before"]["ranked"]["accuracy"]],
                 [name, "after LoRA fine-tune", t["after"]["greedy"]["accuracy"],
                  t["after"]["ranked"]["accuracy"]]]  # fmt: skip
    print("\n" + c.table(["intents", "model", "greedy exact match", "ranked (mean log-lik)"], rows))
    for name, t in run["tasks"].items():
        tr = t["training"]
        print(f"{name} intents: {t['test_rows']} test messages; fine-tune {tr['rows_seen']:,} rows seen "
              f"({tr['epochs_seen']} epochs of {tr['rows_available']:,}), {tr['steps']} steps in "
              f"{tr['seconds']:.0f} s, "
              f"{tr['tokens_per_second']:,.0f} tokens/s, final loss {tr['final_loss_mean_last_50']:.3f}")  # fmt: skip
    if run["contended"]:
        print(f"contended: load average {run['load_average_at_start'][0]} at start (> {CONTENDED_LOAD})")
    c.save("banking77", run)


if __name__ == "__main__":
    main()

"""How to batch texts for the embedder on this machine: fixed counts against token budgets.

The texts are the distinct chunks ragloop makes of a real corpus (the DVC docs, snapshot 1 of
../shared/data/docs-history: Markdown with short and long sections), embedded by the warm MiniLM-L6 model with
nothing around it, in one process, each setting after a wait for a quiet CPU:

* fixed N: `SentenceTransformer.encode(texts, batch_size=N)` (it sorts by length inside the call);
* tokens B: `encode_batched` (ragloop's embedder): longest first, each batch at most B padded tokens and
  `embedder.batch_size` texts.

The default setting (params.yaml `embedder.batch_tokens`) should be the fastest here; ratios are against
sentence-transformers' default of 32 texts a batch, which LangChain's HuggingFaceEmbeddings keeps.

    .venv/bin/python bench/embed_batching.py [--sample N] [--fixed 8,16,32,64] [--tokens 1024,2048,4096,8192]
"""

from __future__ import annotations

import argparse
from typing import Any

import _common as c  # sets the offline environment before the project imports
from churn import HISTORY, OLD, extract
from head_to_head import load_model, read_folder, sample
from index_throughput import chunk_texts

from components.config import EmbedderParams
from components.knowledge.embedder import encode_batched, token_lengths


def corpus_texts(every: int) -> list[str]:
    (tar,) = c.require_shared(f"{HISTORY}/dvc.org_content-docs_md_{OLD}.tar.gz")
    with c.workdir("embed-batching") as work:
        docs = extract(tar, work / "snap")
        if every > 1:
            sample(docs, every)
        return chunk_texts(read_folder(docs), c.deployment(work / "chunker"))  # ragloop's chunks, default params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sample", type=int, default=1, help="keep one file in N (a quick check)")
    ap.add_argument("--fixed", default="8,16,32,64", help="texts per batch to try")
    ap.add_argument("--tokens", default="1024,2048,4096,8192", help="padded tokens per batch to try")
    ap.add_argument("--max-wait", type=float, default=60.0, help="seconds to wait for a quiet CPU before each timing")
    args = ap.parse_args()
    texts = corpus_texts(args.sample)
    model = load_model()
    lengths = token_lengths(model, texts)
    assert lengths is not None, "MiniLM has a tokenizer"
    at_window = int((lengths >= model.max_seq_length).sum())
    model.encode(texts[:64], batch_size=32, show_progress_bar=False)  # warm
    default = EmbedderParams()
    settings: list[tuple[str, Any]] = [(f"fixed {n}", int(n)) for n in args.fixed.split(",")]
    settings += [(f"tokens {b}", int(b)) for b in args.tokens.split(",")]
    rows: list[dict[str, Any]] = []
    for label, value in settings:
        c.wait_quiet(max_wait=args.max_wait)
        with c.Timer() as t:
            if label.startswith("fixed"):
                model.encode(texts, batch_size=value, normalize_embeddings=True, show_progress_bar=False)
            else:
                encode_batched(model, texts, default.batch_size, value)
        rows.append({"setting": label, "seconds": round(t.seconds, 3), "texts_per_s": round(len(texts) / t.seconds, 1),
                     "tokens_per_s": round(int(lengths.sum()) / t.seconds), "others": t.others})  # fmt: skip
        c.log(f"{label}: {t.seconds:.1f} s (other processes' load {t.others:.0%})")
    base = next(r["seconds"] for r in rows if r["setting"] == "fixed 32")
    for r in rows:
        r["speedup_vs_fixed_32"] = round(base / r["seconds"], 3)
    best = min(rows, key=lambda r: r["seconds"])
    chosen = f"tokens {default.batch_tokens}"
    print(f"\n{len(texts):,} texts, {int(lengths.sum()):,} tokens (mean {lengths.mean():.0f}, "
          f"{at_window} at the {model.max_seq_length}-token window)")  # fmt: skip
    print(c.table(["setting", "s", "texts/s", "tokens/s", "x fixed 32", "others"],
                  [[r["setting"], r["seconds"], r["texts_per_s"], r["tokens_per_s"], r["speedup_vs_fixed_32"],
                    r["others"]] for r in rows]))  # fmt: skip
    print(f"fastest: {best['setting']}; the default is {chosen}")
    c.save("embed_batching", {
        "texts": len(texts), "tokens": int(lengths.sum()), "max_seq_length": model.max_seq_length,
        "texts_at_window": at_window,
        "sample_one_in": args.sample, "default": {"batch_size": default.batch_size,
                                                   "batch_tokens": default.batch_tokens},
        "fastest": best["setting"], "results": rows,
    })  # fmt: skip


if __name__ == "__main__":
    main()

"""Time to first token and total time of `ragloop api`'s chat completions, streamed (`stream: true`) and whole, at 1
and 8 concurrent clients, on loopback.

The deployment is built as bench/api_load.py builds it (a temp folder with copies of params.yaml, the sample
documents and the behaviour suite; the default base model and the index; --champion adds a LoRA champion), or
--deployment DIR reuses one. Then `ragloop api` is started as a user starts it, and for each client count N and each
mode, N threads (httpx, server-sent events read as they arrive) send their share of a fixed number of requests:

* time to first token: from sending the request to the first non-empty content delta (streamed), or to the whole
  body (not streamed: the first token reaches the client with the last);
* total: from sending the request to `data: [DONE]` (streamed) or the whole body;
* the streamed text is checked against the whole answer to the same question (greedy decoding: the same text).

    .venv/bin/python bench/streaming.py [--requests 32] [--clients 1,8] [--champion] [--deployment DIR]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import _common as c  # sets the offline environment before the project imports
from api_load import build, free_port, percentiles, start_server, stop_server, timed_clients


def ask(http: Any, question: str, stream: bool) -> tuple[float, float, str]:
    """(ms to the first token, ms in all, the answer's text) of one chat completion."""
    body = {"model": "ragloop", "messages": [{"role": "user", "content": question}], "stream": stream}
    t0 = time.perf_counter()
    if not stream:
        r = http.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        ms = (time.perf_counter() - t0) * 1000
        return ms, ms, r.json()["choices"][0]["message"]["content"]
    first, pieces = None, []
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                raise RuntimeError(f"error event: {chunk['error']}")
            piece = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
            if piece:
                first = first or time.perf_counter()
                pieces.append(piece)
    end = time.perf_counter()
    return ((first or end) - t0) * 1000, (end - t0) * 1000, "".join(pieces)


def rounds(port: int, questions: list[str], clients: int, requests: int, stream: bool) -> dict[str, Any]:
    import httpx

    todo = list(range(requests))
    lock = threading.Lock()
    ttft: list[float] = []
    total: list[float] = []
    texts: dict[int, str] = {}

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                first, whole, text = ask(http, questions[i % len(questions)], stream)
                with lock:
                    ttft.append(first)
                    total.append(whole)
                    texts[i] = text

    seconds = timed_clients(client, clients)
    row = {"clients": clients, "stream": stream, "requests": requests, "seconds": round(seconds, 2),
           "requests_per_s": round(requests / seconds, 2), "ttft_ms": percentiles(ttft),
           "total_ms": percentiles(total), "texts": texts}  # fmt: skip
    c.log(f"{clients} client(s), {'streamed' if stream else 'whole'}: first token p50 {row['ttft_ms']['p50']} ms, "
          f"total p50 {row['total_ms']['p50']} ms, {row['requests_per_s']} requests/s")  # fmt: skip
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=32, help="chat completions per client count and mode")
    ap.add_argument("--clients", default="1,8", help="concurrent client counts, comma-separated")
    ap.add_argument("--champion", action="store_true", help="fine-tune a LoRA champion first (~5 more minutes)")
    ap.add_argument("--deployment", type=Path, help="reuse a deployment built by an earlier run")
    args = ap.parse_args()

    with c.workdir("streaming") as tmp:
        work = args.deployment or tmp
        if args.deployment is None:
            build(work, champion=args.champion)
        from components.behaviour.loop import load_suite
        from components.config import load_params

        params = load_params(work / "params.yaml")
        gate, _ = load_suite(params)
        questions = [case.question for case in gate]
        port = free_port()
        proc = start_server(work, port)
        try:
            results = [rounds(port, questions, int(n), args.requests, stream)
                       for n in args.clients.split(",") for stream in (False, True)]  # fmt: skip
        finally:
            stop_server(proc)

    whole = {r["clients"]: r["texts"] for r in results if not r["stream"]}
    same = all(r["texts"] == whole[r["clients"]] for r in results if r["stream"])
    rows = [[r["clients"], "streamed" if r["stream"] else "whole", r["requests"], r["ttft_ms"]["p50"],
             r["ttft_ms"]["p95"], r["total_ms"]["p50"], r["total_ms"]["p95"], r["requests_per_s"]]
            for r in results]  # fmt: skip
    print()
    print(c.table(["clients", "mode", "requests", "first token p50 ms", "first token p95 ms", "total p50 ms",
                   "total p95 ms", "requests/s"], rows))  # fmt: skip
    print(f"\nstreamed text equals the whole answer for every request: {same}")
    c.save("streaming", {"champion": args.champion, "max_batch": params.api.max_batch,
                         "max_new_tokens": params.generator.max_new_tokens, "streamed_equals_whole": same,
                         "rounds": [{k: v for k, v in r.items() if k != "texts"} for r in results]})  # fmt: skip


if __name__ == "__main__":
    main()

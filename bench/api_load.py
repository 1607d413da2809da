"""`ragloop api` under load, on loopback, against the same assistant called in-process in the same run.

The deployment is a temp folder with copies of params.yaml, the sample documents and the behaviour suite. It is
built as `make run` builds it: the default base model (`ragloop base-model`), the index (`ragloop index
--direct`) and, unless --no-champion, a LoRA champion (`ragloop finetune`, which gates and promotes it). Or
--deployment DIR reuses one built by an earlier run (BENCH_KEEP=1 keeps it).

Then, with the gate set's questions in a fixed order:
* in-process: `Engine.answer` one question at a time (no HTTP, no trace), `Engine.answer` + `write_trace` (the
  trace written on the request path, as before issue 22), every question queued at once (the engine's limit: it
  generates in batches of `api.max_batch`, no HTTP, no trace), and the same with the server's store work beside it
  (each answer's trace spooled, a thread delivering the spool to MLflow as the server's does: the limit of this
  machine for the server's whole job, without HTTP): requests/s and latency percentiles;
* the server: `ragloop api` started as a user starts it, waited for on /health; for each client count N, N
  threads (httpx) each send their share of a fixed number of chat completions, each answer followed by a
  feedback call on its trace id: throughput (as a share of both limits), p50/p95/p99 of the completions, status
  counts, the engine's mean batch size in the round, and how long the background delivery took to empty the spool
  after the round;
* accounting, counted in the tracking store: every completion has exactly one trace (the ids the server returned
  are all in the serving experiment, and the experiment holds no other trace started during the run), and every
  accepted feedback call landed as exactly one `user_feedback` assessment on its trace.

    .venv/bin/python bench/api_load.py [--requests 96] [--clients 1,4,8,16] [--in-process 48] [--no-champion]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import _common as c  # sets the offline environment before the project imports

PY = sys.executable
RAGLOOP = str(Path(PY).parent / "ragloop")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cmd: list[str], cwd: Path) -> None:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False,
                          env={**os.environ, "RAGLOOP_PREFECT_SERVER": "ephemeral"})  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[1:])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    c.log(f"{' '.join(Path(x).name if i == 0 else x for i, x in enumerate(cmd))}: {time.perf_counter() - t0:.1f} s")


def build(work: Path, champion: bool) -> None:
    shutil.copy(c.ROOT / "params.yaml", work / "params.yaml")
    for rel in ("data/docs", "data/behaviour"):
        shutil.copytree(c.ROOT / rel, work / rel)
    params = ["--params", str(work / "params.yaml")]
    run([RAGLOOP, "base-model", *params], work)
    run([RAGLOOP, "index", "--direct", *params], work)
    if champion:
        run([RAGLOOP, "finetune", *params], work)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "mean": round(sum(ordered) / len(ordered), 1)}


def in_process(params: Any, questions: list[str]) -> dict[str, Any]:
    from components.config import Settings
    from components.serving.engine import Engine
    from components.tracking.trace_writer import write_trace
    from components.tracking.traces import keep_trace

    settings = Settings.from_env()
    out: dict[str, Any] = {}
    with Engine(params, settings) as engine:
        engine.answer(questions[0])  # warm
        for label, traced in (("in-process answer", False), ("in-process answer + trace", True)):
            c.wait_quiet()
            latencies, t0 = [], time.perf_counter()
            for q in questions:
                t = time.perf_counter()
                answered = engine.answer(q)
                if traced:
                    assert write_trace(params, settings, answered).stored
                latencies.append((time.perf_counter() - t) * 1000)
            out[label] = measured(label, len(questions), time.perf_counter() - t0, latencies)
        # the limit of this engine: every question queued at once, so it generates in batches of api.max_batch
        label = f"in-process, all queued (batches of {params.api.max_batch})"
        c.wait_quiet()
        t0 = time.perf_counter()
        futures = [(engine.submit(q), time.perf_counter()) for q in questions]
        latencies = []
        for future, queued in futures:
            future.result()
            latencies.append((time.perf_counter() - queued) * 1000)
        out[label] = measured(label, len(questions), time.perf_counter() - t0, latencies)
        # the same, with the work the server adds beside it but no HTTP: each answer's trace spooled as it is
        # done and a thread writing the spool to the store (the server's delivery): the limit of this machine for
        # the server's whole job
        label = f"in-process, all queued + traces spooled and delivered (batches of {params.api.max_batch})"
        c.wait_quiet()
        stop = threading.Event()
        delivery = threading.Thread(target=_deliver_until, args=(params, settings, stop))
        t0 = time.perf_counter()
        delivery.start()
        futures = [(engine.submit(q), time.perf_counter()) for q in questions]
        latencies = []
        for future, queued in futures:
            keep_trace(params, future.result())
            latencies.append((time.perf_counter() - queued) * 1000)
        stop.set()
        delivery.join()
        out[label] = measured(label, len(questions), time.perf_counter() - t0, latencies)
    return out


def _deliver_until(params: Any, settings: Any, stop: threading.Event) -> None:
    """The server's delivery loop, in short: write what the spools hold to the store until `stop`, then the rest."""
    from components.serving.app import DELIVERY_POLL_S
    from components.tracking.traces import deliver_spool, spool_depth

    while not stop.wait(DELIVERY_POLL_S):
        deliver_spool(params, settings, wait=True)
    while spool_depth(params):
        deliver_spool(params, settings, wait=True)


def measured(label: str, requests: int, seconds: float, latencies: list[float]) -> dict[str, Any]:
    """One in-process row: requests/s and latency percentiles, logged."""
    row = {"requests": requests, "seconds": round(seconds, 2), "requests_per_s": round(requests / seconds, 2),
           "latency_ms": percentiles(latencies)}  # fmt: skip
    c.log(f"{label}: {row['requests_per_s']} requests/s, p50 {row['latency_ms']['p50']} ms")
    return row


def start_server(work: Path, port: int) -> subprocess.Popen:
    import httpx

    log = open(work / "api.log", "w")  # noqa: SIM115 (kept open for the server's lifetime)
    proc = subprocess.Popen([RAGLOOP, "api", "--params", str(work / "params.yaml"), "--port", str(port)],
                            cwd=work, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    t0, limit = time.perf_counter(), 600.0  # a hang guard: imports of torch, transformers, MLflow on a slow machine
    while time.perf_counter() - t0 < limit:
        if proc.poll() is not None:
            sys.exit(f"ragloop api exited {proc.returncode}:\n{(work / 'api.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                c.log(f"ragloop api answered /health after {time.perf_counter() - t0:.1f} s")
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit(f"ragloop api did not answer /health within {limit:.0f} s")


def timed_clients(client: Any, clients: int) -> float:
    """Once the machine is quiet, run `clients` threads of `client` at once; the seconds until the last ends."""
    c.wait_quiet()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def load(port: int, questions: list[str], clients: int, requests: int) -> dict[str, Any]:
    import httpx

    base = f"http://127.0.0.1:{port}"
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    traces: list[str] = []
    feedback: dict[str, int] = {}
    lock = threading.Lock()
    todo = list(range(requests))

    def client() -> None:
        with httpx.Client(base_url=base, timeout=600) as http:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                body = {"model": "ragloop", "messages": [{"role": "user", "content": questions[i % len(questions)]}]}
                t = time.perf_counter()
                r = http.post("/v1/chat/completions", json=body)
                ms = (time.perf_counter() - t) * 1000
                trace_id = r.json().get("ragloop", {}).get("trace_id") if r.status_code == 200 else None
                with lock:
                    statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
                    if r.status_code == 200:
                        latencies.append(ms)
                if trace_id:
                    f = http.post("/v1/feedback", json={"trace_id": trace_id, "value": i % 2 == 0,
                                                        "comment": f"bench request {i}"})  # fmt: skip
                    with lock:
                        traces.append(trace_id)
                        feedback[str(f.status_code)] = feedback.get(str(f.status_code), 0) + 1

    before = httpx.get(base + "/health", timeout=60).json()
    seconds = timed_clients(client, clients)
    ok = statuses.get("200", 0)
    after = httpx.get(base + "/health", timeout=60).json()
    batches = after["batches"] - before["batches"]
    depth, drain_s = drained(base, int(after["spool_depth"]))
    result = {"clients": clients, "requests": requests, "seconds": round(seconds, 2),
              "requests_per_s": round(ok / seconds, 2), "latency_ms": percentiles(latencies), "statuses": statuses,
              "feedback_statuses": feedback, "spool_depth_at_end": depth, "spool_drained_s": drain_s,
              "mean_batch": round((after["answered"] - before["answered"]) / max(batches, 1), 2),
              "trace_ids": traces}  # fmt: skip
    pct = result["latency_ms"]
    c.log(f"{clients} clients: {result['requests_per_s']} requests/s (with a feedback call each), "
          f"p50 {pct['p50']} ms, p99 {pct['p99']} ms, statuses {statuses}, mean batch {result['mean_batch']}; "
          f"spool {depth} at the end, empty {drain_s} s later")  # fmt: skip
    return result


def drained(base: str, depth: int | None = None, limit: float = 600.0) -> tuple[int, float]:
    """The spool depth when a round ends (`depth`, as /health gave it then, or read now), and the seconds the
    server's background delivery took to empty it (so that a round's backlog is not counted in the next)."""
    import httpx

    def read() -> int:
        return int(httpx.get(base + "/health", timeout=60).json()["spool_depth"])

    t0 = time.perf_counter()
    depth = left = read() if depth is None else depth
    while left > 0:
        if time.perf_counter() - t0 > limit:  # a hang guard, not a figure: never report an undrained spool as drained
            raise RuntimeError(f"the spool still held {left} record(s) after {limit:.0f} s")
        time.sleep(0.1)
        left = read()
    return depth, round(time.perf_counter() - t0, 2)


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (the server drains its spool for up to 10 s), then SIGKILL if it has not exited: none left behind."""
    proc.terminate()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def account(params: Any, since_ms: int, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """What the tracking store holds for the load rounds: traces and feedback, counted."""
    from mlflow import MlflowClient

    from components.config import Settings
    from components.tracking.mlflow_runs import tracking_uri
    from components.tracking.trace_schema import USER_FEEDBACK
    from components.tracking.traces import deliver_spool

    settings = Settings.from_env()
    spool = deliver_spool(params, settings)
    client = MlflowClient(tracking_uri(params, settings))
    exp = client.get_experiment_by_name(params.tracking.serving_experiment)
    stored: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_traces(locations=[exp.experiment_id], filter_string=f"trace.timestamp_ms >= {since_ms}",
                                    max_results=500, page_token=token)  # fmt: skip
        stored.update({t.info.trace_id: t for t in page})
        token = page.token
        if not token:
            break
    returned = [t for r in rounds for t in r["trace_ids"]]
    accepted = sum(n for r in rounds for s, n in r["feedback_statuses"].items() if s in {"200", "202"})
    feedback_stored = sum(1 for tid in returned if tid in stored
                          for a in stored[tid].info.assessments if a.name == USER_FEEDBACK)  # fmt: skip
    completions = sum(r["statuses"].get("200", 0) for r in rounds)
    found = sum(1 for t in set(returned) if t in stored)  # each returned id in the store, under that id
    return {
        "completions": completions,
        "trace_ids_returned": len(returned),
        "distinct_trace_ids": len(set(returned)),
        "traces_in_store_for_them": found,
        "traces_in_store_since_start": len(stored),
        "feedback_accepted": accepted,
        "feedback_in_store": feedback_stored,
        "spool_after_delivery": spool,
        "every_request_one_trace": completions == len(returned) == len(set(returned)) == len(stored) == found,
        "every_feedback_landed": accepted == feedback_stored == len(returned),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=96, help="chat completions per client count")
    ap.add_argument("--clients", default="1,4,8,16", help="concurrent client counts, comma-separated")
    ap.add_argument("--in-process", type=int, default=48, help="questions answered in-process (each way)")
    ap.add_argument("--no-champion", action="store_true", help="serve the base model (skips the fine-tune)")
    ap.add_argument("--deployment", type=Path, help="reuse a deployment built by an earlier run")
    args = ap.parse_args()

    with c.workdir("api-load") as tmp:
        work = args.deployment or tmp
        if args.deployment is None:
            build(work, champion=not args.no_champion)
        from components.behaviour.loop import load_suite
        from components.config import load_params

        params = load_params(work / "params.yaml")
        gate, _ = load_suite(params)
        questions = [case.question for case in gate]
        local = in_process(params, questions[: args.in_process])
        port = free_port()
        since_ms = int(time.time() * 1000)
        proc = start_server(work, port)
        try:
            rounds = [load(port, questions, int(n), args.requests) for n in args.clients.split(",")]
        finally:
            stop_server(proc)
        counted = account(params, since_ms, rounds)

    base = local["in-process answer"]
    limit = next(v for k, v in local.items() if k.startswith("in-process, all queued ("))["requests_per_s"]
    whole = next(v for k, v in local.items() if k.startswith("in-process, all queued + "))["requests_per_s"]
    rows = [[k, v["requests"], v["requests_per_s"], v["latency_ms"]["p50"], v["latency_ms"]["p95"],
             v["latency_ms"]["p99"], round(v["requests_per_s"] / base["requests_per_s"], 3),
             round(v["requests_per_s"] / limit, 3), round(v["requests_per_s"] / whole, 3), "", ""]
            for k, v in local.items()]  # fmt: skip
    for r in rounds:
        rows.append([f"ragloop api, {r['clients']} client(s)", r["requests"], r["requests_per_s"],
                     r["latency_ms"]["p50"], r["latency_ms"]["p95"], r["latency_ms"]["p99"],
                     round(r["requests_per_s"] / base["requests_per_s"], 3), round(r["requests_per_s"] / limit, 3),
                     round(r["requests_per_s"] / whole, 3), r["mean_batch"],
                     f"{r['spool_depth_at_end']} / {r['spool_drained_s']} s"])  # fmt: skip
    print()
    print(c.table(["path", "requests", "requests/s", "p50 ms", "p95 ms", "p99 ms", "vs in-process",
                   "vs engine limit", "vs limit with traces", "mean batch", "spool at end / emptied after"],
                  rows))  # fmt: skip
    print(f"\naccounting: {counted}")
    c.save("api_load", {
        "champion": not args.no_champion, "in_process": local,
        "server": [{k: v for k, v in r.items() if k != "trace_ids"} for r in rounds], "accounting": counted,
    })  # fmt: skip
    if not (counted["every_request_one_trace"] and counted["every_feedback_landed"]):
        sys.exit("accounting failed: see above")


if __name__ == "__main__":
    main()

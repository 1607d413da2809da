"""Whole commands as a user runs them: each in a fresh process, against its floor measured in the same run.

* no-change `ragloop index` through Prefect, the project's server already running, against `ragloop index
  --direct` plus a bare `python -c 'import prefect'` (target: at most 1 s more); the same command with Prefect's
  temporary server per process (RAGLOOP_PREFECT_SERVER=ephemeral, the old default) for comparison, and a floor
  that adds MLflow's SQL store to the import of prefect (the Prefect path logs each run there; --direct does not);
* a cold `ragloop query` against a bare `python -c 'import torch, transformers, chromadb'` (target: 1.5x at most);
* `ragloop --help` (target: under 1 s);
* `ragloop server start` on a new database and on an existing one (no target: Prefect's migrations).

The deployment is a temp folder with a copy of params.yaml and the sample documents (data/docs), indexed once
before any timing. Repeats rotate the order of the commands; each waits for a quiet CPU first and records the
share of the cores other processes used meanwhile (the Prefect server's own CPU is counted apart).

    .venv/bin/python bench/commands.py [--repeats 5] [--server-repeats 3] [--ephemeral-repeats 2] [--max-wait 60]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as c  # sets the offline environment before the project imports

TARGET_INDEX_OVERHEAD_S = 1.0
TARGET_QUERY_RATIO = 1.5
TARGET_HELP_S = 1.0
QUERY = "how much does an ATM withdrawal cost"
PY = sys.executable
RAGLOOP = [str(Path(PY).parent / "ragloop")]  # the console script, as a user runs it
INDEX, DIRECT, EPHEMERAL = ("ragloop index (project server running)", "ragloop index --direct",
                             "ragloop index (temporary server per process)")  # fmt: skip
QUERY_CMD, HELP = "ragloop query (cold)", "ragloop --help"
PREFECT, STACK = "import prefect", "import torch, transformers, chromadb"
MLFLOW = "import prefect + mlflow's SQL store"  # what the Prefect path imports and --direct does not
FLOORS = {PREFECT: "import prefect", STACK: "import torch, transformers, chromadb",
          MLFLOW: "import prefect, mlflow.store.tracking.sqlalchemy_store"}  # fmt: skip


def lscpu() -> dict[str, str]:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    keep = ("Model name", "CPU family", "Model", "CPU(s)", "Thread(s) per core", "Hypervisor vendor")
    return {k: fields[k].strip() for k in keep if k in fields} | {
        "avx512f": str("avx512f" in fields.get("Flags", "")).lower()}  # fmt: skip


def project(work: Path) -> tuple[Path, dict[str, str]]:
    """A copy of params.yaml beside a copy of the sample documents; the project's Prefect server on a free port."""
    shutil.copy(c.ROOT / "params.yaml", work / "params.yaml")
    shutil.copytree(c.ROOT / "data" / "docs", work / "data" / "docs")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(work / ".prefect"), RAGLOOP_PREFECT_SERVER="project",
               RAGLOOP_PREFECT_PORT=str(_free_port()))  # fmt: skip
    return work / "params.yaml", env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process that is not ours (the Prefect server); 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


MAX_WAIT = [60.0]  # seconds to wait for a quiet CPU before each timing (--max-wait)


def timed(cmd: list[str], env: dict[str, str], cwd: Path, server_pid: int | None = None) -> dict[str, Any]:
    """One fresh process, waited for; wall seconds and what else kept the CPU busy meanwhile."""
    c.wait_quiet(max_wait=MAX_WAIT[0])
    kids0, server0 = resource.getrusage(resource.RUSAGE_CHILDREN), _cpu_s(server_pid)
    with c.Timer() as t:
        done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    own = (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
    server = _cpu_s(server_pid) - server0
    others = max(0.0, t.others - (own + server) / (t.seconds * (os.cpu_count() or 1)))
    return {"s": t.seconds, "others": round(others, 3), "cpu_s": round(own, 3), "server_cpu_s": round(server, 3),
            "stdout": done.stdout}  # fmt: skip


def server_starts(params: Path, env: dict[str, str], work: Path, repeats: int) -> dict[str, list[float]]:
    """`ragloop server start` on a fresh PREFECT_HOME (a new database), then stopped and started again on it."""
    out: dict[str, list[float]] = {"new_database_s": [], "existing_database_s": []}
    for i in range(repeats):
        home_env = {**env, "PREFECT_HOME": str(work / f"prefect-start-{i}"), "RAGLOOP_PREFECT_PORT": str(_free_port())}
        for key in ("new_database_s", "existing_database_s"):
            run = timed([*RAGLOOP, "server", "start", "--json", "-p", str(params)], home_env, work)
            assert json.loads(run["stdout"])["started"], "a server was already running"
            out[key].append(round(run["s"], 3))
            subprocess.run(
                [*RAGLOOP, "server", "stop", "-p", str(params)], env=home_env, cwd=work, check=True, capture_output=True
            )  # fmt: skip  (the next start finds the database, no server)
        new, existing = out["new_database_s"][-1], out["existing_database_s"][-1]
        c.log(f"server start: new database {new:.1f} s, existing {existing:.1f} s")
    return out


def commands(params: Path) -> dict[str, list[str]]:
    p = ["-p", str(params)]
    return {INDEX: [*RAGLOOP, "index", "--json", *p], DIRECT: [*RAGLOOP, "index", "--direct", "--json", *p],
            QUERY_CMD: [*RAGLOOP, "query", QUERY, "--json", *p], HELP: [*RAGLOOP, "--help"],
            **{name: [PY, "-c", code] for name, code in FLOORS.items()}}  # fmt: skip


def measure(params: Path, env: dict[str, str], work: Path, repeats: int, ephemeral: int) -> dict[str, list[dict]]:
    started = json.loads(subprocess.run([*RAGLOOP, "server", "start", "--json", "-p", str(params)], env=env,
                                        cwd=work, capture_output=True, text=True, check=True).stdout)  # fmt: skip
    pid = started["pid"]
    built = timed([*RAGLOOP, "index", "--json", "-p", str(params)], env, work, pid)
    c.log(f"indexed the sample documents through the project server: {built['s']:.1f} s")
    cmds = commands(params)
    runs: dict[str, list[dict]] = {name: [] for name in cmds}
    names = list(cmds)
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: no command always runs first
        for name in order:
            run = timed(cmds[name], env, work, pid)
            if name.startswith("ragloop index") and json.loads(run["stdout"])["published"]:
                raise SystemExit("a no-change index run published a new version")
            runs[name].append({k: v for k, v in run.items() if k != "stdout"})
        c.log(f"repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {runs[n][-1]['s']:.2f} s" for n in names))
    eph_env = {**env, "RAGLOOP_PREFECT_SERVER": "ephemeral", "PREFECT_HOME": str(work / "prefect-ephemeral")}
    runs[EPHEMERAL] = []
    for i in range(ephemeral):  # the first on a new database, the next ones on an existing one
        run = timed([*RAGLOOP, "index", "--json", "-p", str(params)], eph_env, work)
        runs[EPHEMERAL].append({k: v for k, v in run.items() if k != "stdout"} | {"new_database": i == 0})
        c.log(f"{EPHEMERAL}: {run['s']:.1f} s")
    return runs


def summarise(runs: dict[str, list[dict]], starts: dict[str, list[float]]) -> tuple[dict[str, Any], list[list]]:
    med = {name: c.median([x["s"] for x in xs]) for name, xs in runs.items() if xs}
    floor_index, floor_query = med[DIRECT] + med[PREFECT], med[STACK]
    summary = {"index_overhead_s": round(med[INDEX] - floor_index, 3), "index_floor_s": round(floor_index, 3),
               "index_overhead_over_prefect_and_mlflow_imports_s": round(med[INDEX] - med[DIRECT] - med[MLFLOW], 3),
               "query_ratio": round(med[QUERY_CMD] / floor_query, 3), "help_s": round(med[HELP], 3),
               "server_start_new_database_s": c.median(starts["new_database_s"]),
               "server_start_existing_database_s": c.median(starts["existing_database_s"])}  # fmt: skip
    targets = {"index_overhead": summary["index_overhead_s"] <= TARGET_INDEX_OVERHEAD_S,
               "query_ratio": summary["query_ratio"] <= TARGET_QUERY_RATIO,
               "help": summary["help_s"] < TARGET_HELP_S}  # fmt: skip
    rows: list[list[Any]] = [
        [f"{INDEX}, no change", med[INDEX], f"{DIRECT} + {PREFECT}", floor_index,
         f"{summary['index_overhead_s']:+.2f} s", f"<= +{TARGET_INDEX_OVERHEAD_S:.0f} s",
         _met(targets["index_overhead"])],
        [f"  {EPHEMERAL}", med.get(EPHEMERAL, "-"), "", "", "", "", ""],
        [f"  {DIRECT}", med[DIRECT], "", "", "", "", ""],
        [f"  {PREFECT}", med[PREFECT], "", "", "", "", ""],
        [f"  {MLFLOW} (the Prefect path logs to MLflow)", med[MLFLOW], f"{DIRECT} + this", med[DIRECT] + med[MLFLOW],
         f"{summary['index_overhead_over_prefect_and_mlflow_imports_s']:+.2f} s", "", ""],
        [QUERY_CMD, med[QUERY_CMD], STACK, floor_query, f"{summary['query_ratio']:.2f}x", f"<= {TARGET_QUERY_RATIO}x",
         _met(targets["query_ratio"])],
        [HELP, med[HELP], "", "", "", f"< {TARGET_HELP_S:.0f} s", _met(targets["help"])],
        ["ragloop server start, new database", summary["server_start_new_database_s"], "", "", "", "", ""],
        ["ragloop server start, existing database", summary["server_start_existing_database_s"], "", "", "", "", ""],
    ]  # fmt: skip
    return {**summary, "medians_s": {k: round(v, 3) for k, v in med.items()}, "targets": targets}, rows


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="rounds of the commands and their floors")
    ap.add_argument("--server-repeats", type=int, default=3, help="server starts on a new and an existing database")
    ap.add_argument("--ephemeral-repeats", type=int, default=2, help="index runs with a temporary server each")
    ap.add_argument("--max-wait", type=float, default=60.0, help="seconds to wait for a quiet CPU before each timing")
    args = ap.parse_args()
    MAX_WAIT[0] = args.max_wait
    with c.workdir("commands") as work:
        params, env = project(work)
        t0 = time.perf_counter()
        try:
            starts = server_starts(params, env, work, args.server_repeats)
            runs = measure(params, env, work, args.repeats, args.ephemeral_repeats)
        finally:  # no server outlives the benchmark, however it ends
            for home in work.glob("*prefect*"):
                subprocess.run([*RAGLOOP, "server", "stop", "-p", str(params)], env={**env, "PREFECT_HOME": str(home)},
                               cwd=work, capture_output=True, check=False)  # fmt: skip
        c.log(f"measured in {time.perf_counter() - t0:.0f} s; removing the temp deployment")
    summary, rows = summarise(runs, starts)
    print("\n" + c.table(["command", "median s", "floor", "floor s", "vs floor", "target", ""], rows))
    print("\nother processes' share of the CPU per run (max): "
          + ", ".join(f"{n} {max(x['others'] for x in xs):.0%}" for n, xs in runs.items() if xs))  # fmt: skip
    print("targets: " + ", ".join(f"{k} {_met(v)}" for k, v in summary["targets"].items()))
    c.save("commands", {
        "lscpu": lscpu(), "affinity": sorted(os.sched_getaffinity(0)),
        "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "repeats": args.repeats, "query": QUERY, **summary, "server_starts_s": starts, "runs": runs,
    })  # fmt: skip


if __name__ == "__main__":
    main()

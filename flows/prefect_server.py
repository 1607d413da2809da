"""The project's one local Prefect server: started once, detached, and reused by every command that runs a flow.

Without a Prefect API, each process that runs a flow starts and stops a temporary server of its own: ~25 s per
command on a slow 2-core machine, more than the 20 s Prefect waits for it on a new database, and nothing is left
to look at afterwards. Instead, the first command starts `prefect server start` on 127.0.0.1 under the project's
PREFECT_HOME (`.prefect` beside params.yaml unless PREFECT_HOME is set), records pid, port and URL in
`ragloop-server.json` there, and later commands (and the DVC stages, which call `ragloop`) reuse it; its UI shows
the runs that just happened. `ragloop server stop` ends it.

A server started this way never stays up that nobody asked for: a small watcher process (`python -m
flows.prefect_server watch`, the leader of the server's process group) runs the server as its child and stops it
when it has been idle for RAGLOOP_PREFECT_IDLE_S seconds (default 1800; 0: never) or when its PREFECT_HOME folder is
gone. Idle means no flow run pending, running or cancelling, no client connected to its port (a UI tab, a
`ragloop serve` worker, a running flow), no write to its database and no command reusing it. Each server started
here is also listed machine-wide, under RAGLOOP_STATE_DIR (default $XDG_STATE_HOME/ragloop, else
~/.local/state/ragloop): `ragloop server status --all` lists them, `ragloop server stop --all` ends them.

A Prefect API the user configured (PREFECT_API_URL, or the active Prefect profile) always wins, and
RAGLOOP_PREFECT_SERVER=ephemeral keeps Prefect's temporary server, with a startup limit a slow machine meets.
This module never imports prefect before it has set PREFECT_API_URL: Prefect reads its settings once, at import.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

MODE_VAR = "RAGLOOP_PREFECT_SERVER"  # project (default): the project's server; ephemeral: Prefect's temporary one
MODES = ("project", "ephemeral")
PORT_VAR = "RAGLOOP_PREFECT_PORT"  # the project server's port; default 4200 when free, else any free port
DEFAULT_PORT = 4200
STATE_FILE = "ragloop-server.json"
START_TIMEOUT_S = 180.0  # a new database takes 30+ s to migrate on a slow machine
STOP_TIMEOUT_S = 30.0
IDLE_VAR = "RAGLOOP_PREFECT_IDLE_S"  # seconds without activity before a started server stops itself; 0: never
DEFAULT_IDLE_S = 1800.0
STATE_DIR_VAR = "RAGLOOP_STATE_DIR"  # where the machine-wide list of started servers lives
TOUCH_FILE = "ragloop-server.touch"  # a command reusing the server marks it as in use
EPHEMERAL_TIMEOUT_VAR = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"  # Prefect's default: 20
EPHEMERAL_TIMEOUT_S = "180"

_children: dict[int, subprocess.Popen[bytes]] = {}  # servers this process started: reaped by poll(), never left zombies


class ServerError(RuntimeError):
    """The project's Prefect server could not be started or configured."""


@dataclass(frozen=True)
class ServerState:
    pid: int
    port: int
    home: str
    log: str
    started_at: str
    idle_s: float = DEFAULT_IDLE_S

    @property
    def url(self) -> str:
        """The UI."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def project_home(params_file: Path) -> Path:
    """PREFECT_HOME when set, else `.prefect` beside the params file (what the Makefile sets)."""
    home = os.environ.get("PREFECT_HOME")
    return Path(home).expanduser().resolve() if home else Path(params_file).resolve().parent / ".prefect"


def mode() -> str:
    value = os.environ.get(MODE_VAR) or "project"
    if value not in MODES:
        raise ServerError(f"{MODE_VAR}={value!r}: expected one of {', '.join(MODES)}")
    return value


# -- the state file and the process it names ---------------------------------------------------------------------
def read_state(home: Path) -> ServerState | None:
    try:
        return ServerState(**json.loads((home / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(home: Path, state: ServerState) -> None:
    tmp = home / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, home / STATE_FILE)


def _alive(pid: int) -> bool:
    if pid in _children:
        return _children[pid].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process under a reused pid
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal said it exists
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_prefect_server(state: ServerState) -> bool:
    """The pid is alive and is a `prefect server start` on the recorded port (not a pid reused since)."""
    if not _alive(state.pid):
        return False
    try:
        args = Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    watcher = b"flows.prefect_server" in args and b"watch" in args
    return (watcher or (b"server" in args and b"start" in args)) and str(state.port).encode() in args


def healthy(state: ServerState, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{state.api_url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def running(home: Path) -> ServerState | None:
    """The recorded server if its process is alive; a state file naming a dead process is removed."""
    state = read_state(home)
    if state is None:
        return None
    if _is_prefect_server(state):
        return state
    (home / STATE_FILE).unlink(missing_ok=True)
    return None


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One starter or stopper at a time per PREFECT_HOME: a second command waits, then reuses the server."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "ragloop-server.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- start, stop, status --------------------------------------------------------------------------------------
def start(
    home: Path, port: int | None = None, timeout: float = START_TIMEOUT_S, idle_s: float | None = None
) -> tuple[ServerState, bool]:
    """The project's server, healthy: the running one (False) or a new one (True), detached from this process and
    stopped by its watcher after `idle_s` idle seconds (default: RAGLOOP_PREFECT_IDLE_S, else 1800; 0: never)."""
    with _locked(home):
        state = running(home)
        if state is None:
            state = _spawn(home, port or _pick_port(), idle_seconds() if idle_s is None else idle_s)
            _write_state(home, state)  # before it is healthy: a command that dies waiting leaves it findable
            _register(state)
            started = True
        else:
            (home / TOUCH_FILE).touch()  # in use: the watcher counts this as activity
            started = False
        _wait_healthy(home, state, timeout)
        return state, started


def idle_seconds() -> float:
    value = os.environ.get(IDLE_VAR)
    if value is None or value == "":
        return DEFAULT_IDLE_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        raise ServerError(f"{IDLE_VAR} must be a number of seconds >= 0 (0: never stop), got {value!r}")
    return seconds


def _pick_port() -> int:
    wanted = os.environ.get(PORT_VAR)
    if wanted:
        if not wanted.isdigit():
            raise ServerError(f"{PORT_VAR} must be a port number, got {wanted!r}")
        return int(wanted)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", DEFAULT_PORT))
            return DEFAULT_PORT
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def _prefect_command() -> list[str]:
    beside = Path(sys.executable).parent / "prefect"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "prefect"]


def _server_command(port: int) -> list[str]:
    return [*_prefect_command(), "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def _spawn(home: Path, port: int, idle_s: float) -> ServerState:
    """The watcher (which starts the server as its child), detached: a session and process group of its own, so a
    Ctrl-C or the end of the command that started it does not reach it, and stop() ends both with one signal."""
    log = home / "ragloop-server.log"
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)  # the UI would call that API instead of its own
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    cmd = [sys.executable, "-m", "flows.prefect_server", "watch", str(home), str(port), str(idle_s)]
    with open(log, "ab") as out:
        out.write(f"\n--- {datetime.now(UTC).isoformat(timespec='seconds')} {' '.join(_server_command(port))} "
                  f"(stops after {idle_s:g} s idle; 0: never)\n".encode())  # fmt: skip
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=home, start_new_session=True)  # fmt: skip
    _children[proc.pid] = proc
    return ServerState(proc.pid, port, str(home), str(log), datetime.now(UTC).isoformat(timespec="seconds"), idle_s)


def _wait_healthy(home: Path, state: ServerState, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not healthy(state):
        if not _alive(state.pid):
            (home / STATE_FILE).unlink(missing_ok=True)
            raise ServerError(f"the Prefect server exited while starting; log {state.log}:\n{_tail(state.log)}")
        if time.monotonic() > deadline:
            _terminate(state)
            (home / STATE_FILE).unlink(missing_ok=True)
            raise ServerError(f"the Prefect server did not answer {state.api_url}/health within {timeout:.0f} s; "
                              f"log {state.log}:\n{_tail(state.log)}")  # fmt: skip
        time.sleep(0.5)


def _tail(log: str, chars: int = 2000) -> str:
    try:
        return Path(log).read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def stop(home: Path, timeout: float = STOP_TIMEOUT_S) -> ServerState | None:
    """End the project's server (SIGTERM, then SIGKILL after `timeout`) and wait until it is gone; None when none
    was running."""
    with _locked(home):
        state = running(home)
        if state is not None:
            _terminate(state, timeout)
            _unregister(state)
        (home / STATE_FILE).unlink(missing_ok=True)
        return state


def _terminate(state: ServerState, timeout: float = STOP_TIMEOUT_S) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(state.pid, sig)  # the server leads its own process group (start_new_session)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while _alive(state.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _alive(state.pid):
            _children.pop(state.pid, None)
            return


# -- every server started here, machine-wide: `ragloop server status/stop --all` -------------------------------
def state_dir() -> Path:
    base = os.environ.get(STATE_DIR_VAR)
    if base:
        return Path(base).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "ragloop"


def _registry() -> Path:
    return state_dir() / "prefect-servers"


def _register(state: ServerState) -> None:
    folder = _registry()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{state.pid}.json.tmp"
    tmp.write_text(json.dumps(asdict(state)) + "\n")
    os.replace(tmp, folder / f"{state.pid}.json")


def _unregister(state: ServerState) -> None:
    (_registry() / f"{state.pid}.json").unlink(missing_ok=True)


def started_servers() -> list[ServerState]:
    """Every server ragloop started on this machine (under this state dir) that still runs; entries naming a
    process that is gone are removed."""
    out = []
    for path in sorted(_registry().glob("*.json")):
        try:
            state = ServerState(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if _is_prefect_server(state):
            out.append(state)
        else:
            path.unlink(missing_ok=True)
    return out


def status_all() -> list[dict]:
    return [{**asdict(s), "url": s.url, "home_exists": Path(s.home).is_dir(), "healthy": healthy(s)}
            for s in started_servers()]  # fmt: skip


def stop_all(timeout: float = STOP_TIMEOUT_S) -> list[ServerState]:
    """End every server ragloop started on this machine; the ones whose folder is gone too."""
    stopped = []
    for state in started_servers():
        home = Path(state.home)
        if home.is_dir() and read_state(home) == state:
            stop(home, timeout)
        else:
            _terminate(state, timeout)
            _unregister(state)
        stopped.append(state)
    return stopped


# -- the watcher: the server's parent, which stops it when idle or orphaned ---------------------------------------
ACTIVE_RUN_STATES = ("PENDING", "RUNNING", "CANCELLING", "PAUSED")


def _clients(port: int) -> int:
    """Established TCP connections to `port` on this machine (Linux /proc; 0 elsewhere): a UI tab, a worker, a
    flow's client."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def _active_runs(port: int) -> bool:
    """A flow run is pending, running, paused or cancelling; True too when the server does not answer (starting,
    or busy): never stop what cannot be asked."""
    body = json.dumps({"flow_runs": {"state": {"type": {"any_": list(ACTIVE_RUN_STATES)}}}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/flow_runs/count", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return bool(json.loads(response.read()))
    except (OSError, ValueError):
        return True


def _touched(home: Path) -> float:
    try:
        return (home / TOUCH_FILE).stat().st_mtime
    except OSError:
        return 0.0


def _say(text: str) -> None:
    """A line in the server's log (the watcher's stdout)."""
    sys.stdout.write(f"--- {datetime.now(UTC).isoformat(timespec='seconds')} ragloop: {text}\n")
    sys.stdout.flush()


def watch(home: Path, port: int, idle_s: float, poll_s: float | None = None) -> int:
    """Run the server as a child until it exits, its folder is gone, or it has been idle `idle_s` seconds."""
    child = subprocess.Popen(_server_command(port), stdin=subprocess.DEVNULL, cwd=home)
    me = ServerState(os.getpid(), port, str(home), "", "", idle_s)

    def _end(signum: int, _frame: object) -> None:
        child.terminate()
        try:
            child.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
        _unregister(me)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, _end)
    signal.signal(signal.SIGINT, _end)
    poll = poll_s or (min(30.0, max(1.0, idle_s / 10)) if idle_s else 30.0)
    last_active, touched = time.monotonic(), _touched(home)
    while True:
        try:
            code = child.wait(timeout=poll)
        except subprocess.TimeoutExpired:
            pass
        else:  # the server exited by itself
            _unregister(me)
            recorded = read_state(home)
            if recorded is not None and recorded.pid == me.pid:
                (home / STATE_FILE).unlink(missing_ok=True)
            return code
        if not home.is_dir():
            _say(f"{home} is gone; stopping its Prefect server")
            _end(signal.SIGTERM, None)
        now = _touched(home)
        if now != touched or _clients(port) or _active_runs(port):
            last_active, touched = time.monotonic(), now
        if idle_s and time.monotonic() - last_active >= idle_s:
            with _locked(home):
                if _touched(home) != touched:  # a command took it over just now
                    touched, last_active = _touched(home), time.monotonic()
                    continue
                (home / STATE_FILE).unlink(missing_ok=True)
            _say(f"idle for {idle_s:g} s; stopping the Prefect server ({IDLE_VAR} sets the period)")
            _end(signal.SIGTERM, None)


def status(home: Path) -> dict:
    state = running(home)
    base = {"running": state is not None, "healthy": state is not None and healthy(state), "home": str(home)}
    return base if state is None else {**base, "url": state.url, "api_url": state.api_url, **asdict(state)}


# -- what a flow command connects to --------------------------------------------------------------------------
def configured_api_url(home: Path) -> str | None:
    """A Prefect API the user chose: PREFECT_API_URL, or the active profile's (read without importing prefect
    when it is not imported yet; once it is, its own settings, such as a test harness's)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    if "prefect" in sys.modules:
        from prefect.settings import get_current_settings

        return get_current_settings().api.url
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    return profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL") or None


@contextmanager
def prefect_api(params_file: Path, notice: Callable[[str], None] | None = None) -> Iterator[str]:
    """Run the body against a Prefect API; yields its URL, or 'ephemeral'. `notice(text)` hears when the project
    server had to be started. Enter it before anything imports prefect: Prefect reads its settings at import."""
    home = project_home(params_file)
    configured = configured_api_url(home)
    if configured:
        yield configured
        return
    if mode() == "ephemeral":
        os.environ.setdefault(EPHEMERAL_TIMEOUT_VAR, EPHEMERAL_TIMEOUT_S)
        yield "ephemeral"
        return
    state, started = start(home)
    if started and notice is not None:
        notice(f"started the project's Prefect server: UI {state.url} (pid {state.pid}; `ragloop server stop` ends it)")
    os.environ.setdefault("PREFECT_HOME", str(home))  # the client's files beside its server's
    if "prefect" not in sys.modules:
        # kept after the body, as Prefect keeps what it read at import; also seen by the processes the body starts
        os.environ["PREFECT_API_URL"] = state.api_url
        yield state.api_url
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: state.api_url}):
        yield state.api_url


if __name__ == "__main__":  # the watcher: python -m flows.prefect_server watch HOME PORT IDLE_S
    if len(sys.argv) != 5 or sys.argv[1] != "watch":
        sys.exit("usage: python -m flows.prefect_server watch HOME PORT IDLE_S")
    sys.exit(watch(Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))

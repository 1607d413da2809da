"""`ragloop api` as a real process (uvicorn) on a loopback port against a tiny deployment whose index lives in a
real Chroma server (the setup the README prescribes for readers that run alongside index runs), called through
the official `openai` client and httpx; traces read back from the real MLflow store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from components.config import Settings
from components.serving.app import TRACE_HEADER, ApiConfigError, api_key_for
from components.tracking import registry, trace_writer
from components.tracking.trace_schema import CHECK_PREFIX, TAG_INDEX_VERSION, TAG_MODEL_VERSION, USER_FEEDBACK
from tests.helpers import REPO, Deployment, wait_until
from tests.service.servers import chroma_server, free_port, port_of
from tests.serving.conftest import KEY, ApiServer, build_deployment

pytestmark = [pytest.mark.slow, pytest.mark.server]

SETTINGS = Settings(mlflow_tracking_uri=None, chroma_host=None, chroma_port=8000, chroma_ssl=False)
AUTH = {"Authorization": f"Bearer {KEY}"}
ASK = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "I lost my card"}]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    chroma = chroma_server(root).start()
    env = {"RAGLOOP_CHROMA_HOST": "127.0.0.1", "RAGLOOP_CHROMA_PORT": str(port_of(chroma)), "RAGLOOP_API_KEY": KEY}
    server = None
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():  # the index runs of this process use the same Chroma server
                mp.setenv(key, value)
            dep = build_deployment(root)
            dep.index()
            server = ApiServer(dep, env=env).start()
            yield server
    finally:
        if server is not None:
            server.stop()
        chroma.stop()


def _openai(api: ApiServer) -> OpenAI:
    return OpenAI(base_url=api.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def _stored(api: ApiServer, trace_id: str):
    """The trace as the store holds it once the server has delivered its spool (answers do not wait for it)."""
    wait_until(lambda: api.health()["spool_depth"] == 0, "the spool delivered", 300, api.proc, api.log)
    return trace_writer.read_trace(api.dep.params(), SETTINGS, trace_id)


def test_models_and_a_chat_completion_through_the_official_openai_client(api: ApiServer) -> None:
    client = _openai(api)
    assert [m.id for m in client.models.list()] == ["ragloop"]
    assert client.models.retrieve("ragloop").model_extra["ragloop"] == {"model_version": "v1", "index_version": 1}

    raw = client.chat.completions.with_raw_response.create(model="ragloop", messages=ASK)  # type: ignore[arg-type]
    completion = raw.parse()
    extra = completion.model_extra["ragloop"]
    assert raw.headers[TRACE_HEADER] == extra["trace_id"] and extra["trace_id"].startswith("tr-")
    assert completion.choices[0].message.role == "assistant" and completion.choices[0].finish_reason == "stop"
    assert completion.model == "ragloop"
    assert extra["model_version"] == "v1" and extra["index_version"] == 1 and extra["traced"] is True
    assert extra["sources"][0]["doc"] == "cards/lost-card.md"
    assert set(extra["checks"]) == {"format", "intent", "citation"}
    assert completion.usage is not None and completion.usage.prompt_tokens > 0

    trace = _stored(api, extra["trace_id"])
    assert trace.info.tags[TAG_MODEL_VERSION] == "v1" and trace.info.tags[TAG_INDEX_VERSION] == "1"
    spans = {s.name: s for s in trace.data.spans}
    assert [d["metadata"]["doc_uri"] for d in spans["retrieve"].outputs] == [s["doc"] for s in extra["sources"]]
    assert spans["generate"].outputs == {"text": completion.choices[0].message.content}
    assert spans["answer"].inputs == {"question": "I lost my card"}
    checks = {a.name.removeprefix(CHECK_PREFIX): a.value for a in trace.info.assessments
              if a.source.source_type == "CODE"}  # fmt: skip
    assert checks == extra["checks"]


def test_a_streamed_completion_is_the_same_answer_token_by_token(api: ApiServer) -> None:
    client = _openai(api)
    create = client.chat.completions.with_raw_response.create
    raw = create(model="ragloop", messages=ASK, stream=True, stream_options={"include_usage": True})  # type: ignore[arg-type]
    header = raw.headers["x-ragloop-trace-id"]  # before the first token: the id the trace will be stored under
    chunks = list(raw.parse())
    *choices, usage = chunks
    assert choices[0].choices[0].delta.role == "assistant" and usage.choices == []
    pieces = [c.choices[0].delta.content for c in choices if c.choices[0].delta.content]
    assert len(pieces) > 1, pieces  # the tiny model's answers run to max_new_tokens: many tokens, many deltas
    assert [c.choices[0].finish_reason for c in choices] == [None] * (len(choices) - 1) + ["stop"]
    assert {c.id for c in chunks} == {chunks[0].id} and all(c.object == "chat.completion.chunk" for c in chunks)
    extra = choices[-1].model_extra["ragloop"]
    assert extra["trace_id"] == header and chunks[0].id == "chatcmpl-" + header.removeprefix("tr-")
    trace = _stored(api, extra["trace_id"])  # traced after the last token, for the whole answer
    spans = {s.name: s for s in trace.data.spans}
    plain = client.chat.completions.create(model="ragloop", messages=ASK)  # type: ignore[arg-type]
    text = plain.choices[0].message.content
    assert "".join(pieces) == text  # greedy decoding: the same answer either way
    assert spans["generate"].outputs == {"text": text} and extra["checks"] == plain.model_extra["ragloop"]["checks"]
    assert usage.usage is not None and usage.usage == plain.usage

    without = list(client.chat.completions.create(model="ragloop", messages=ASK, stream=True))  # type: ignore[arg-type]
    assert all(c.choices and c.usage is None for c in without)  # usage only when asked for


def test_concurrent_streams_share_batches_and_each_gets_its_own_text(api: ApiServer) -> None:
    client = _openai(api)
    questions = ["I lost my card", "How much is a SWIFT transfer?", "Do you offer mortgages?", "card fees"] * 2
    expected = {q: client.chat.completions.create(model="ragloop", messages=[{"role": "user", "content": q}]
                                                  ).choices[0].message.content for q in set(questions)}  # fmt: skip
    before = api.health()["batches"]
    got: dict[int, list[str]] = {}

    def stream(i: int) -> None:
        events = client.chat.completions.create(model="ragloop", stream=True,
                                                messages=[{"role": "user", "content": questions[i]}])  # fmt: skip
        got[i] = [c.choices[0].delta.content or "" for c in events]

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert {i: "".join(p) for i, p in got.items()} == {i: expected[q] for i, q in enumerate(questions)}
    assert all(sum(1 for p in pieces if p) > 1 for pieces in got.values())
    assert api.health()["batches"] - before < len(questions)  # streamed requests were answered together


def test_langchain_chat_openai_streams_from_the_api(api: ApiServer) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model="ragloop", base_url=api.url + "/v1", api_key=KEY, max_retries=0, timeout=300)  # type: ignore[arg-type]
    parts = list(chat.stream("I lost my card"))
    text = "".join(str(p.content) for p in parts)
    assert sum(1 for p in parts if p.content) > 1 and text == chat.invoke("I lost my card").content
    assert parts[-1].response_metadata.get("finish_reason") == "stop" or any(
        p.response_metadata.get("finish_reason") == "stop" for p in parts
    )


def _http_reply(sock: socket.socket) -> str:
    """One whole HTTP/1.1 response read off a raw socket: the head, then its Content-Length of body (the server may
    send them in separate segments, as uvicorn does on a loaded machine)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            return data.decode()
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
    while len(body) < length and (piece := sock.recv(65536)):
        body += piece
    return (head + b"\r\n\r\n" + body).decode()


def test_a_body_over_api_max_body_bytes_is_a_413_before_it_is_read(api: ApiServer) -> None:
    limit = api.dep.params().api.max_body_bytes
    with socket.create_connection(("127.0.0.1", api.port), timeout=60) as sock:  # the header alone: no body sent
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {limit + 1}\r\n\r\n".encode())  # fmt: skip
        reply = _http_reply(sock)
    status, _, rest = reply.partition("\r\n")
    assert status.split()[1] == "413", reply
    error = json.loads(rest.partition("\r\n\r\n")[2])["error"]
    assert error["code"] == "request_too_large" and "api.max_body_bytes" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}

    def chunked():  # no Content-Length: counted as it arrives
        piece = b" " * 65536
        for _ in range(limit // len(piece) + 2):
            yield piece

    refused = httpx.post(api.url + "/v1/chat/completions", content=chunked(), headers=AUTH, timeout=300)
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "request_too_large", refused.text

    def small():  # chunked within the limit: read as usual
        yield json.dumps({"model": "ragloop", "messages": ASK}).encode()

    read = httpx.post(api.url + "/v1/chat/completions", content=small(), timeout=300,
                      headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip
    assert read.status_code == 200 and read.json()["ragloop"]["traced"], read.text


def test_feedback_lands_on_its_trace_as_human_and_an_unknown_trace_is_404(api: ApiServer) -> None:
    answered = httpx.post(api.url + "/v1/chat/completions", json={"model": "ragloop", "messages": ASK},
                          headers=AUTH, timeout=300)  # fmt: skip
    assert answered.status_code == 200, answered.text
    trace_id = answered.headers[TRACE_HEADER]
    sent = {"trace_id": trace_id, "value": False, "comment": "cites the wrong page", "correction": "see lost-card"}
    got = httpx.post(api.url + "/v1/feedback", json=sent, headers=AUTH, timeout=300)
    # 202 while its trace is on its way to the store (it lands on it once it is there), 200 when already there
    assert (got.status_code, got.json()["status"]) in {(200, "logged"), (202, "queued")}, got.text
    trace = _stored(api, trace_id)
    human = [a for a in trace.info.assessments if a.source.source_type == "HUMAN"]
    assert sorted(a.name for a in human) == ["correction", USER_FEEDBACK]
    fb = next(a for a in human if a.name == USER_FEEDBACK)
    assert fb.value is False and fb.rationale == "cites the wrong page"

    unknown = httpx.post(api.url + "/v1/feedback", json={"trace_id": "tr-" + "0" * 32, "value": True}, headers=AUTH,
                         timeout=300)  # fmt: skip
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "trace_id"
    for body, field in (({"trace_id": trace_id, "value": "great"}, "value"), ({"value": True}, "trace_id"),
                        ({"trace_id": trace_id, "value": 1, "stars": 5}, "stars"),
                        ({"trace_id": trace_id, "value": 1, "comment": "x" * 5000}, "comment")):  # fmt: skip
        bad = httpx.post(api.url + "/v1/feedback", json=body, headers=AUTH, timeout=300)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == field, (body, bad.text)
    assert len([a for a in _stored(api, trace_id).info.assessments if a.name == USER_FEEDBACK]) == 1


def test_bad_requests_get_a_4xx_naming_the_field_and_the_key_is_required(api: ApiServer) -> None:
    client = _openai(api)
    with pytest.raises(BadRequestError) as empty:
        client.chat.completions.create(model="ragloop", messages=[])
    assert empty.value.body["param"] == "messages"  # type: ignore[index]
    with pytest.raises(NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=ASK)  # type: ignore[arg-type]
    assert unknown.value.body["param"] == "model"  # type: ignore[index]

    limits = api.dep.params().api
    cases = [
        ({"model": "ragloop", "messages": [{"role": "system", "content": "hi"}]}, "messages"),
        ({"model": "ragloop", "messages": [{"role": "user", "content": "x" * (limits.max_input_chars + 1)}]},
         "messages"),
        ({"model": "ragloop", "messages": [{"role": "user", "content": "hi"}] * (limits.max_messages + 1)},
         "messages"),
        ({"model": "ragloop", "messages": [{"role": "user", "content": "   "}]}, "messages[0].content"),
        ({"model": "ragloop", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"model": "ragloop", "messages": ASK, "n": 2}, "n"),
        ({"messages": ASK}, "model"),
    ]  # fmt: skip
    for body, field in cases:
        got = httpx.post(api.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=300)
        assert 400 <= got.status_code < 500 and got.json()["error"]["param"] == field, (field, got.text)
        assert field in got.json()["error"]["message"]
    broken = httpx.post(api.url + "/v1/chat/completions", content=b"{not json", headers=AUTH, timeout=300)
    assert broken.status_code == 400 and broken.json()["error"]["param"] == "body"

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        denied = httpx.post(api.url + "/v1/chat/completions", json={"model": "ragloop", "messages": ASK},
                            headers=headers, timeout=300)  # fmt: skip
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(api.url + "/v1/models", headers=headers, timeout=300).status_code == 401
    health = api.health()  # open to probes
    assert health["model_version"] == "v1" and health["index_version"] == 1
    assert health["tracking_store_reachable"] is True and health["spool_depth"] == 0


def test_a_promotion_and_a_publish_during_a_stream_of_requests(api: ApiServer) -> None:
    """Every response OK; each response's versions are its trace's; a request sent after a response from the new
    model (or index) was received is answered by it; the server never restarts."""
    results: list[dict] = []
    stop = threading.Event()
    lock = threading.Lock()

    def ask(n: int) -> None:
        with httpx.Client(headers=AUTH, timeout=300) as http:
            while not stop.is_set():
                sent = time.monotonic()
                got = http.post(
                    api.url + "/v1/chat/completions",
                    timeout=300,
                    json={"model": "ragloop", "messages": [{"role": "user", "content": f"card {n}"}]},
                )
                body = got.json() if got.headers.get("content-type") == "application/json" else {}
                with lock:
                    results.append({"status": got.status_code, "sent": sent, "received": time.monotonic(),
                                    **body.get("ragloop", {}), "text": got.text[:300]})  # fmt: skip

    def seen(pred) -> float | None:
        with lock:
            times = [r["received"] for r in results if pred(r)]
        return min(times) if times else None

    clients = [threading.Thread(target=ask, args=(n,), daemon=True) for n in range(3)]
    for c in clients:
        c.start()
    params = api.dep.params()
    try:
        wait_until(lambda: len(results) >= 6, "six answers", 600, api.proc, api.log)
        registry.promote(params, SETTINGS, "2")
        wait_until(lambda: seen(lambda r: r.get("model_version") == "v2") is not None, "an answer from v2", 600,
                   api.proc, api.log)  # fmt: skip
        api.dep.write("savings.md", "# Savings\n\nThe savings account pays 2 percent interest a year.\n")
        assert api.dep.index()["index_version"] == 2
        wait_until(lambda: seen(lambda r: r.get("index_version") == 2) is not None, "an answer from index v2", 600,
                   api.proc, api.log)  # fmt: skip
        count = len(results)
        wait_until(lambda: len(results) >= count + 6, "six more answers", 600, api.proc, api.log)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=600)
    assert api.proc is not None and api.proc.poll() is None
    assert all(r["status"] == 200 for r in results), [r for r in results if r["status"] != 200][:3]
    first_v2 = seen(lambda r: r["model_version"] == "v2")
    first_i2 = seen(lambda r: r["index_version"] == 2)
    assert first_v2 is not None and first_i2 is not None
    assert all(r["model_version"] == "v2" for r in results if r["sent"] > first_v2)
    assert all(r["index_version"] == 2 for r in results if r["sent"] > first_i2)
    assert {r["model_version"] for r in results} == {"v1", "v2"} and {r["index_version"] for r in results} == {1, 2}
    for r in results:  # the trace says what the body says, and one answer never mixes two index versions
        trace = _stored(api, r["trace_id"])
        assert trace.info.tags[TAG_MODEL_VERSION] == r["model_version"]
        assert trace.info.tags[TAG_INDEX_VERSION] == str(r["index_version"])
        spans = {s.name: s for s in trace.data.spans}
        assert {d["metadata"]["index_version"] for d in spans["retrieve"].outputs} == {r["index_version"]}
        assert spans["generate"].attributes["model_version"] == r["model_version"]
    health = api.health()
    assert (health["model_version"], health["index_version"]) == ("v2", 2)
    assert health["model_switches"] == 1 and health["index_switches"] == 1 and health["failed"] == 0


def test_a_non_loopback_bind_needs_a_key(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("RAGLOOP_API_KEY", raising=False)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert api_key_for(host) is None
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.org"):
        with pytest.raises(ApiConfigError, match="RAGLOOP_API_KEY"):
            api_key_for(host)
    monkeypatch.setenv("RAGLOOP_API_KEY", "k")
    assert api_key_for("0.0.0.0") == "k" and api_key_for("127.0.0.1") == "k"  # a key, once set, is always checked

    dep = Deployment.create(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAGLOOP_API_KEY"}
    port = free_port()
    refused = subprocess.run([sys.executable, "-m", "flows.cli", "api", "--host", "0.0.0.0", "--port", str(port),
                              "--params", str(dep.params_file)], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "RAGLOOP_API_KEY" in refused.stderr and "0.0.0.0" in refused.stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)


def test_ragloop_api_runs_as_a_prefect_flow_run(prefect_server, tmp_path) -> None:
    """`ragloop api --prefect`: the same server, as the flow run `serve-api` on the Prefect API, Running while it
    serves and final once the process is stopped."""
    from prefect.settings import PREFECT_API_URL

    dep = build_deployment(tmp_path / "prefect-served", adapters=0)
    dep.index()
    api_url = str(PREFECT_API_URL.value())
    # the key set explicitly: this module's other tests leave one in the environment the server inherits
    server = ApiServer(dep, env={"PREFECT_API_URL": api_url, "RAGLOOP_API_KEY": KEY}, args=("--prefect",)).start()

    def runs() -> list[dict]:
        got = httpx.post(f"{api_url}/flow_runs/filter", json={"flows": {"name": {"any_": ["serve-api"]}}}, timeout=60)
        return [r for r in got.json() if r["parameters"].get("params_file") == str(dep.params_file)]

    try:
        body = {"model": "ragloop", "messages": [{"role": "user", "content": "I lost my card"}]}
        got = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=300,
                         headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
        assert got.status_code == 200 and got.json()["ragloop"]["traced"], got.text
        [run] = runs()
        assert run["state_type"] == "RUNNING"
    finally:
        server.stop()
    wait_until(lambda: runs()[0]["state_type"] in {"COMPLETED", "CANCELLED", "CRASHED", "FAILED"},
               "the serve-api flow run in a final state", 300)  # fmt: skip

"""The reference router's cloud client against a real OpenAI-compatible server process on loopback.

Every case must end within its deadline, with bounded attempts and a clear outcome. Timings are kept short
(backoff 50 ms, timeouts under a second) so the module runs in a few seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.fallback import Auth, CloudModel, Fallback, Retries
from edgepack.manifest import write_manifest
from edgepack.router.client import complete
from fake_export import make_export

SERVER = Path(__file__).with_name("openai_server.py")
ANSWER = "The capital of France is Paris."
REQUEST = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16}
SLACK = 0.3  # scheduling slack allowed past a deadline on a loaded 2-core machine


@pytest.fixture(scope="module")
def server():
    proc = subprocess.Popen([sys.executable, str(SERVER)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().split()[1])
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


def _post(base, path, data):
    req = urllib.request.Request(base + path, json.dumps(data).encode(), {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def _log(base):
    return json.loads(urllib.request.urlopen(base + "/__log", timeout=5).read())


@pytest.fixture
def cloud(server):
    """cloud(script, **fallback) -> manifest fallback section pointed at the server, its script loaded."""

    def make(script=None, providers=None, retries=None, **kw):
        _post(server, "/__reset", {})
        _post(server, "/__script", script or {})
        model = CloudModel(id="acme/m", providers=providers or [])
        kw = {"attempt_timeout_s": 1.0, "deadline_s": 3.0, "auth": Auth(kind="user_oauth"), **kw}
        fb = Fallback(
            endpoint=server + "/v1", model=model, retries=Retries(backoff_s=0.05, **(retries or {})), **kw
        )
        return fb.to_manifest("acme/m")

    return make


def _run(fallback, **kw):
    start = time.monotonic()
    deltas = []
    result = complete(fallback, REQUEST, on_delta=deltas.append, **kw)
    elapsed = time.monotonic() - start
    assert elapsed <= fallback["deadline_s"] + SLACK, (
        f"{elapsed:.2f}s past the {fallback['deadline_s']}s deadline"
    )
    assert len(result.attempts) <= (fallback["retries"]["count"] + 1) * len(fallback["candidates"])
    return result, deltas, elapsed


def test_json_answer_with_auth_and_billing_headers(cloud, server):
    fb = cloud(bill_to="acme-org")
    result, _, _ = _run(fb, token="user-oauth-access", stream=False)
    assert (result.outcome, result.text, result.model, result.finish_reason) == (
        "ok",
        ANSWER,
        "acme/m:fastest",
        "stop",
    )
    [seen] = _log(server)
    assert seen["path"] == "/v1/chat/completions" and seen["model"] == "acme/m:fastest" and not seen["stream"]
    assert seen["headers"]["Authorization"] == "Bearer user-oauth-access"
    assert seen["headers"]["X-HF-Bill-To"] == "acme-org"


def test_proxy_auth_calls_the_apps_backend_without_billing_header(cloud, server):
    fb = cloud(auth=Auth(kind="proxy", proxy_url=server + "/proxy/v1"), bill_to="acme-org")
    result, _, _ = _run(fb, stream=False)
    assert result.ok
    [seen] = _log(server)
    assert seen["path"] == "/proxy/v1/chat/completions"
    assert "X-HF-Bill-To" not in seen["headers"] and "Authorization" not in seen["headers"]


def test_sse_stream_delivers_deltas_in_order(cloud):
    result, deltas, _ = _run(cloud(), stream=True)
    assert result.ok and deltas == ["The capital", " of France", " is Paris."] and result.text == ANSWER


def test_429_without_retry_after_backs_off_then_succeeds(cloud, server):
    result, _, _ = _run(cloud({"acme/m:fastest": ["429", "429", "ok"]}), stream=False)
    assert result.ok and [a.status for a in result.attempts] == [429, 429, 200]
    t = [e["time"] for e in _log(server)]
    assert 0.05 <= t[1] - t[0] < 0.5 and 0.1 <= t[2] - t[1] < 0.6  # exponential: 50 ms, then 100 ms


def test_429_retry_after_is_honoured(cloud, server):
    result, _, _ = _run(cloud({"acme/m:fastest": ["429:1", "ok"]}), stream=False)
    assert result.ok and result.attempts[0].retry_after == 1.0
    t = [e["time"] for e in _log(server)]
    assert t[1] - t[0] >= 1.0
    result, _, _ = _run(
        cloud({"acme/m:fastest": ["429:1", "ok"]}, retries={"honour_retry_after": False}), stream=False
    )
    t = [e["time"] for e in _log(server)]
    assert result.ok and t[1] - t[0] < 0.5


def test_retry_after_beyond_the_deadline_moves_on_instead_of_sleeping(cloud):
    result, _, elapsed = _run(
        cloud({"acme/m:groq": ["429:30"]}, providers=["groq", "together"]), stream=False
    )
    assert result.ok and result.model == "acme/m:together" and elapsed < 0.5
    result, _, elapsed = _run(cloud({"acme/m:fastest": ["429:30"]}), stream=False)
    assert result.outcome == "deadline" and len(result.attempts) == 1 and elapsed < 0.5


def test_503_exhausts_bounded_retries_on_every_provider(cloud):
    fb = cloud({"acme/m:groq": ["503"], "acme/m:together": ["503"]}, providers=["groq", "together"])
    result, _, _ = _run(fb, stream=False)
    assert result.outcome == "exhausted" and [a.status for a in result.attempts] == [503] * 6
    assert [a.model for a in result.attempts] == ["acme/m:groq"] * 3 + ["acme/m:together"] * 3


def test_slow_provider_times_out_and_the_next_answers(cloud):
    fb = cloud({"acme/m:groq": ["slow:3"]}, providers=[{"id": "groq", "timeout_s": 0.4}, "together"])
    result, _, elapsed = _run(fb, stream=True)
    assert (
        result.ok
        and result.model == "acme/m:together"
        and [a.outcome for a in result.attempts] == ["timeout", "ok"]
    )
    assert 0.4 <= elapsed < 1.0


def test_slow_answers_end_at_the_overall_deadline(cloud):
    fb = cloud({"acme/m:fastest": ["slow:5"]}, attempt_timeout_s=0.5, deadline_s=1.2)
    result, _, elapsed = _run(fb, stream=False)
    assert result.outcome == "deadline" and 1.1 <= elapsed and len(result.attempts) <= 3
    assert all(a.outcome == "timeout" for a in result.attempts)


@pytest.mark.parametrize("stream", [False, True])
def test_a_dripping_http10_answer_ends_at_the_deadline(cloud, stream):
    """HTTP/1.0 closes the connection object as soon as the headers are read (``conn.sock`` is None after), and a
    byte every 50 ms satisfies every socket timeout: only a deadline kept outside the reads ends it in time."""
    fb = cloud({"acme/m:fastest": ["drip:0.05"]}, attempt_timeout_s=1.0, deadline_s=1.5)
    result, _, elapsed = _run(fb, stream=stream)
    assert result.outcome in ("deadline", "stream_cut") and 1.4 <= elapsed, (result.outcome, elapsed)
    assert elapsed <= 1.5 + 0.15, f"{elapsed:.2f}s for a 1.5s deadline"


def test_malformed_body_is_retried_then_the_next_provider_answers(cloud):
    fb = cloud({"acme/m:groq": ["malformed"]}, providers=["groq", "together"])
    result, _, _ = _run(fb, stream=False)
    assert result.ok and [a.outcome for a in result.attempts] == ["malformed"] * 3 + ["ok"]
    assert "not a chat completion" in result.attempts[0].detail


def test_stream_cut_midway_keeps_the_partial_answer_and_does_not_retry(cloud):
    fb = cloud({"acme/m:groq": ["cut"]}, providers=["groq", "together"])
    result, deltas, _ = _run(fb, stream=True)
    assert result.outcome == "stream_cut" and result.text == "The capital of France"
    assert deltas == ["The capital", " of France"] and len(result.attempts) == 1  # nothing shown twice


def test_stream_idle_timeout_is_per_event(cloud):
    # 3 events 0.15 s apart: 0.45 s in all, longer than the 0.3 s attempt timeout, yet no gap exceeds it.
    result, deltas, _ = _run(cloud({"acme/m:fastest": ["trickle:0.15"]}, attempt_timeout_s=0.3), stream=True)
    assert result.ok and result.text == ANSWER
    # A gap longer than the timeout after text was shown: a stream cut, not a retry.
    result, deltas, _ = _run(cloud({"acme/m:fastest": ["trickle:0.8"]}, attempt_timeout_s=0.3), stream=True)
    assert result.outcome == "stream_cut" and deltas == ["The capital"] and len(result.attempts) == 1


def test_auth_failure_stops_and_missing_model_moves_on(cloud):
    result, _, _ = _run(cloud({"acme/m:groq": ["401"]}, providers=["groq", "together"]), stream=False)
    assert result.outcome == "rejected" and len(result.attempts) == 1
    result, _, _ = _run(cloud({"acme/m:groq": ["404"]}, providers=["groq", "together"]), stream=False)
    assert result.ok and [a.status for a in result.attempts] == [404, 200]


def test_unreachable_endpoint_ends_with_bounded_attempts(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fb = Fallback(endpoint=f"http://127.0.0.1:{port}/v1", auth=Auth(kind="user_oauth"), model=CloudModel(id="acme/m"),
                  retries=Retries(backoff_s=0.01), attempt_timeout_s=0.5, deadline_s=1).to_manifest("acme/m")  # fmt: skip
    result, _, _ = _run(fb, stream=False)
    assert result.outcome == "exhausted" and [a.outcome for a in result.attempts] == ["connection"] * 3


# --- the manifest's endpoint and model, consumed by huggingface_hub and by `edgepack route` ---------------------


@pytest.fixture
def manifest(tmp_path, server, cloud):
    cloud()  # reset the server: every model answers "ok"
    root = make_export(tmp_path / "out", targets=("coreml",))
    fb = Fallback(endpoint=server + "/v1", auth=Auth(kind="user_oauth"), attempt_timeout_s=1, deadline_s=3,
                  retries=Retries(backoff_s=0.05))  # fmt: skip
    devices = [{"device": "iphone-15", "artifact": "coreml/model.mlpackage", "cloud_only": False, "reason": "fits",
                "max_context": 1024}]  # fmt: skip
    return json.loads(write_manifest(root, fb, devices).read_text()), root / "manifest.json"


def test_inference_client_consumes_the_manifest_endpoint_and_model(manifest, server, monkeypatch):
    from huggingface_hub import InferenceClient, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs offline; this is loopback
    data, _ = manifest
    fallback = data["fallback"]
    client = InferenceClient(base_url=fallback["endpoint"], timeout=fallback["attempt_timeout_s"])
    model = fallback["candidates"][0]["model"]
    assert model == "HuggingFaceTB/SmolLM2-135M-Instruct:fastest"
    out = client.chat_completion(REQUEST["messages"], model=model, max_tokens=16)
    assert out.choices[0].message.content == ANSWER
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat_completion(REQUEST["messages"], model=model, stream=True)
    )
    assert streamed == ANSWER
    assert [(e["path"], e["model"], e["stream"]) for e in _log(server)] == [
        ("/v1/chat/completions", model, False), ("/v1/chat/completions", model, True)]  # fmt: skip


def _route(tmp_path, manifest_path, state, request, *extra):
    (tmp_path / "state.json").write_text(json.dumps(state))
    (tmp_path / "req.json").write_text(json.dumps(request))
    args = ["route", "--manifest", str(manifest_path), "--device-state", str(tmp_path / "state.json"),
            "--request", str(tmp_path / "req.json"), *extra]  # fmt: skip
    result = CliRunner().invoke(main, args)
    return result.exit_code, json.loads(result.stdout)


def test_route_command(manifest, tmp_path):
    _, path = manifest
    code, out = _route(tmp_path, path, {"device": "iphone-15"}, {**REQUEST, "prompt_tokens": 10})
    assert (
        code == 0
        and out["decision"]["route"] == "on_device"
        and out["decision"]["artifact"] == "coreml/model.mlpackage"
    )
    # The device profile caps the context at 1024: 1000 + 100 tokens go to the cloud, which answers.
    code, out = _route(tmp_path, path, {"device": "iphone-15"}, {**REQUEST, "prompt_tokens": 1000, "max_tokens": 100,
                                                                  "stream": False})  # fmt: skip
    assert (
        code == 0
        and out["decision"]["route"] == "cloud"
        and out["decision"]["triggers"] == ["context_overflow"]
    )
    assert out["cloud"]["ok"] and out["cloud"]["text"] == ANSWER
    code, out = _route(
        tmp_path, path, {"device": "iphone-15", "online": False}, {**REQUEST, "prompt_tokens": 5000}
    )
    assert (
        code == 1
        and out["decision"]["route"] == "refuse"
        and out["decision"]["cloud_blockers"] == ["offline"]
    )
    assert "prompt + max_tokens = 5016 tokens > on-device context 1024" in out["decision"]["reasons"][0]


def test_route_rejects_unknown_device(manifest, tmp_path):
    _, path = manifest
    (tmp_path / "s.json").write_text(json.dumps({"device": "pixel-9"}))
    (tmp_path / "r.json").write_text(json.dumps(REQUEST))
    result = CliRunner().invoke(main, ["route", "--manifest", str(path), "--device-state", str(tmp_path / "s.json"),
                                       "--request", str(tmp_path / "r.json")])  # fmt: skip
    assert (
        result.exit_code == 2
        and "device: 'pixel-9' has no entry in the manifest's devices (iphone-15)" in result.output
    )

"""A loopback server speaking the OpenAI-compatible chat-completions protocol, scripted by the tests.

Run as a process: ``python tests/openai_server.py`` prints ``PORT <n>`` and serves on 127.0.0.1.
``POST /__script`` with ``{"model:suffix": ["429", "ok"], ...}`` sets what each model string answers, one
entry per request (the last repeats); ``GET /__log`` returns the requests seen; ``POST /__reset`` clears both.

Behaviours: ``ok`` (JSON, or SSE when the request streams), ``429``, ``429:<retry-after>``, ``503``, ``404``,
``401``, ``slow:<s>`` (sleep, then ok), ``malformed`` (200 with a body that is not a completion),
``cut`` (SSE: two events, then the connection closes), ``trickle:<s>`` (SSE with <s> between events),
``drip:<s>`` (the answer one byte every <s> s, over HTTP/1.0: every read gets a byte, the answer never ends in time).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = ["The capital", " of France", " is Paris."]
STATE = {"script": {}, "log": [], "served": {}}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection, closed after: a cut stream is an EOF

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/__log":
            with LOCK:
                self._json(200, STATE["log"])
        elif self.path.endswith("/models"):
            self._json(
                200, {"object": "list", "data": [{"id": m, "object": "model"} for m in STATE["script"]]}
            )
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path == "/__script":
            with LOCK:
                STATE["script"].update(body)
            return self._json(200, {"ok": True})
        if self.path == "/__reset":
            with LOCK:
                STATE.update(script={}, log=[], served={})
            return self._json(200, {"ok": True})
        if not self.path.endswith("/chat/completions"):
            return self._json(404, {"error": f"no route {self.path}"})
        self._chat(body)

    def _chat(self, body):
        model = body.get("model", "")
        with LOCK:
            n = STATE["served"].get(model, 0)
            STATE["served"][model] = n + 1
            steps = STATE["script"].get(model, ["ok"])
            behaviour = steps[min(n, len(steps) - 1)]
            STATE["log"].append({"path": self.path, "model": model, "behaviour": behaviour, "time": time.time(),
                                 "stream": bool(body.get("stream")), "headers": dict(self.headers),
                                 "messages": body.get("messages")})  # fmt: skip
        kind, _, arg = behaviour.partition(":")
        if kind == "slow":
            time.sleep(float(arg))
            kind = "ok"
        if kind in ("429", "503", "404", "401"):
            headers = {"Retry-After": arg} if arg else {}
            return self._json(int(kind), {"error": {"message": f"scripted {kind}"}}, headers)
        if kind == "drip":  # the whole answer, one byte every <arg> s: each read gets data, the answer never ends
            return self._drip(body, float(arg))
        if kind == "malformed":
            return self._raw(200, "application/json", b"{not json")
        if body.get("stream") or kind in ("cut", "trickle"):
            return self._sse(model, kind, float(arg or 0))
        self._json(200, _completion(model))

    def _sse(self, model, kind, gap):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        pieces = ANSWER[:2] if kind == "cut" else ANSWER
        self.wfile.write(b": ping\n\n")
        for i, piece in enumerate(pieces):
            last = kind != "cut" and i == len(pieces) - 1
            self._event(_chunk(model, piece, "stop" if last else None))
            time.sleep(gap)
        if kind != "cut":
            self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _drip(self, body, gap):
        stream = bool(body.get("stream"))
        payload = (b": ping\n\ndata: " + json.dumps(_chunk(body.get("model"), ANSWER[0], None)).encode() + b"\n\n"
                   if stream else json.dumps(_completion(body.get("model"))).encode())  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream" if stream else "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.flush()
        for i in range(len(payload)):
            self.wfile.write(payload[i : i + 1])
            self.wfile.flush()
            time.sleep(gap)

    def _event(self, data):
        self.wfile.write(b"data: " + json.dumps(data).encode() + b"\n\n")
        self.wfile.flush()

    def _json(self, status, data, headers=None):
        self._raw(status, "application/json", json.dumps(data).encode(), headers)

    def _raw(self, status, ctype, payload, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)


def _completion(model):
    return {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(ANSWER)},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}}  # fmt: skip


def _chunk(model, piece, finish):
    return {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": finish}]}  # fmt: skip


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that gave up (timeout, deadline) closes early: expected, not an error


if __name__ == "__main__":
    server = Server(("127.0.0.1", 0), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)

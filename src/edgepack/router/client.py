"""OpenAI-compatible chat completions against the manifest's endpoint, with the fallback's failure policy.

Standard library only (http.client), so the reference stays easy to port. The policy, per request:
- candidates (``model:policy`` or ``model:provider``) are tried in the manifest's order;
- a candidate is retried on the manifest's retry statuses (429, 5xx), connection errors and malformed bodies,
  up to ``retries.count`` times, waiting ``Retry-After`` when given (and honoured), else exponential backoff;
- a timeout, a 404/422, or a wait longer than the time left moves on to the next candidate;
- 400, 401 and 403 stop at once (another provider would refuse the same request);
- a stream cut after text was delivered is not retried (the tokens are already shown): outcome ``stream_cut``;
- nothing runs past the overall deadline. Per-attempt timeout: the whole answer when not streaming, the
  gap between events when streaming.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

from edgepack import __version__

MOVE_ON = {404, 422}
STOP = {400, 401, 403}


@dataclass
class Attempt:
    model: str
    outcome: str  # ok | http | timeout | connection | malformed | stream_cut
    status: int | None = None
    seconds: float = 0.0
    retry_after: float | None = None
    detail: str = ""


@dataclass
class CloudResult:
    outcome: str  # ok | stream_cut | rejected | deadline | exhausted
    text: str = ""
    model: str | None = None
    finish_reason: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


class _Failed(Exception):
    def __init__(
        self, outcome: str, status: int | None = None, retry_after: float | None = None, detail: str = ""
    ):
        super().__init__(detail)
        self.outcome, self.status, self.retry_after, self.detail = outcome, status, retry_after, detail


def target(fallback: dict, token: str | None = None) -> tuple[str, dict[str, str]]:
    """The chat-completions URL and headers: the app's proxy, or the endpoint with the user's OAuth token."""
    auth = fallback.get("auth") or {}
    base = auth.get("proxy_url") if auth.get("kind") == "proxy" else fallback["endpoint"]
    headers = {"Content-Type": "application/json", "User-Agent": f"edgepack-router/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if fallback.get("bill_to") and auth.get("kind") == "user_oauth":
        headers["X-HF-Bill-To"] = fallback["bill_to"]
    return base.rstrip("/") + "/chat/completions", headers


def complete(
    fallback: dict, request: dict, *, token: str | None = None, stream: bool | None = None,
    on_delta: Callable[[str], None] | None = None, sleep: Callable[[float], None] = time.sleep,
) -> CloudResult:  # fmt: skip
    """Send ``request`` (OpenAI chat fields) per the manifest's fallback section; never raises for the network."""
    start = time.monotonic()
    deadline = start + fallback["deadline_s"]
    stream = fallback["stream"] if stream is None else stream
    url, headers = target(fallback, token)
    result = CloudResult("exhausted")
    candidates = fallback["candidates"]
    for i, cand in enumerate(candidates):
        outcome = _try_candidate(fallback, cand, url, headers, request, stream, deadline, on_delta, sleep, result,
                                 last=i == len(candidates) - 1)  # fmt: skip
        if outcome != "next":
            result.outcome = outcome
            break
    if result.outcome == "exhausted" and time.monotonic() >= deadline:
        result.outcome = "deadline"
    result.seconds = round(time.monotonic() - start, 3)
    return result


def _try_candidate(fb, cand, url, headers, request, stream, deadline, on_delta, sleep, result, last) -> str:
    """Attempts on one candidate: returns a final outcome, or "next" to move to the next candidate."""
    retries = fb["retries"]
    delay = retries["backoff_s"]
    body = _body(request, cand["model"], stream)
    for n in range(retries["count"] + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "deadline"
        attempt = _attempt(url, headers, body, cand["model"], min(cand["timeout_s"], remaining), deadline, stream,
                           on_delta, result)  # fmt: skip
        result.attempts.append(attempt)
        if attempt.outcome == "ok":
            result.model = cand["model"]
            return "ok"
        if attempt.outcome == "timeout" and remaining <= cand["timeout_s"] and not result.text:
            return "deadline"  # the attempt was cut short by the overall deadline
        if result.text:  # part of the answer was already delivered: a retry would repeat it
            return "stream_cut"
        if attempt.status in STOP:
            return "rejected"
        if attempt.status in MOVE_ON or (attempt.outcome == "timeout" and not last):
            return "next"
        if attempt.outcome == "http" and attempt.status not in retries["statuses"]:
            return "next"
        if n == retries["count"]:
            break
        wait = (
            attempt.retry_after
            if retries["honour_retry_after"] and attempt.retry_after is not None
            else delay
        )
        if time.monotonic() + wait >= deadline:
            return "next" if not last else "deadline"
        sleep(wait)
        delay = min(delay * retries["backoff_multiplier"], retries["max_backoff_s"])
    return "next"


def _body(request: dict, model: str, stream: bool) -> bytes:
    fields = ("messages", "max_tokens", "temperature", "top_p", "stop")
    body = {k: request[k] for k in fields if request.get(k) is not None}
    return json.dumps({**body, "model": model, "stream": stream}).encode()


def _attempt(url, headers, body, model, timeout, deadline, stream, on_delta, result) -> Attempt:
    start = time.monotonic()
    try:
        text, finish = _post(url, headers, body, timeout, deadline, stream, on_delta, result)
    except _Failed as f:
        return Attempt(
            model, f.outcome, f.status, round(time.monotonic() - start, 3), f.retry_after, f.detail
        )
    result.text, result.finish_reason = text, finish
    return Attempt(model, "ok", 200, round(time.monotonic() - start, 3))


def _post(url, headers, body, timeout, deadline, stream, on_delta, result) -> tuple[str, str | None]:
    u = urlparse(url)
    conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    kwargs = {"context": ssl.create_default_context()} if u.scheme == "https" else {}
    conn = conn_cls(u.hostname, u.port, timeout=timeout, **kwargs)
    clock = _Clock(conn, timeout, deadline)
    try:
        conn.request("POST", u.path, body, {**headers, **({"Accept": "text/event-stream"} if stream else {})})
        clock.watch(conn.sock)
        clock.arm()
        resp = conn.getresponse()
        if resp.status != 200:
            raise _Failed(
                "http", resp.status, _retry_after(resp.getheader("Retry-After")), _excerpt(resp, clock)
            )
        if stream and "text/event-stream" in (resp.getheader("Content-Type") or ""):
            return _read_stream(resp, clock, on_delta, result)
        return _read_json(resp, clock)
    except (OSError, http.client.HTTPException, _Failed) as exc:
        raise _failure(exc, clock, stream and bool(result.text)) from None
    finally:
        clock.stop()
        conn.close()


def _failure(exc: Exception, clock: _Clock, partial: bool) -> _Failed:
    """What ended an attempt; whatever a read saw once the clock cut the socket, it is a timeout."""
    if clock.expired or isinstance(exc, TimeoutError):
        return _Failed("timeout", detail=f"no answer within {clock.allowed:.2f}s")
    if isinstance(exc, _Failed):
        return exc
    if isinstance(exc, (http.client.IncompleteRead, ConnectionError, http.client.RemoteDisconnected)):
        return _Failed("stream_cut" if partial else "connection", detail=type(exc).__name__)
    return _Failed("connection", detail=str(exc))


class _Clock:
    """Keeps every read inside the attempt's timeout (streaming: per event) and the overall deadline.

    A socket timeout bounds one recv, not a read: a server sending a byte at a time satisfies it forever, and
    once an HTTP/1.0 or ``Connection: close`` answer's headers are read the connection object drops its socket
    (``conn.sock`` is None) while the response still reads from it. So a timer shuts the socket down when the
    time is up, which ends whatever read is blocked on it; ``expired`` then tells a cut from a real EOF."""

    def __init__(self, conn, timeout: float, deadline: float):
        self.conn, self.timeout, self.deadline = conn, timeout, deadline
        self.attempt_end = time.monotonic() + timeout
        self.allowed = timeout
        self.expired = False
        self._sock = None
        self._timer: threading.Timer | None = None

    def limit(self) -> float:
        return max(0.0, min(self.attempt_end, self.deadline) - time.monotonic())

    def watch(self, sock) -> None:
        """The socket the response reads from (kept: the connection may drop its own reference)."""
        self._sock = sock

    def arm(self, idle: bool = False) -> None:
        """Before a read: time left for the attempt (or, streaming, for the next event) within the deadline."""
        if idle:
            self.attempt_end = time.monotonic() + self.timeout
        left = self.limit()
        if left <= 0 or self.expired:
            raise TimeoutError()
        self.allowed = left
        if self._sock is not None:
            self._sock.settimeout(left)
            self._restart(left)

    def check(self) -> None:
        """After a read that ended (EOF): raise if it ended because the time was up."""
        if self.expired:
            raise TimeoutError()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _restart(self, left: float) -> None:
        self.stop()
        self._timer = threading.Timer(left, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _read_json(resp, clock: _Clock) -> tuple[str, str | None]:
    raw = b""
    while True:
        clock.arm()
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
        if not chunk:
            clock.check()
            break
        raw += chunk
    try:
        choice = json.loads(raw)["choices"][0]
        text = choice["message"]["content"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
        raise _Failed("malformed", 200, detail=f"not a chat completion: {raw[:80]!r}") from None
    if not isinstance(text, str):
        raise _Failed("malformed", 200, detail="choices[0].message.content is not a string")
    return text, choice.get("finish_reason")


def _read_stream(resp, clock: _Clock, on_delta, result) -> tuple[str, str | None]:
    """Server-sent events: ``data: {chunk}`` lines until ``data: [DONE]`` (or a finish_reason, then EOF)."""
    finish = None
    result.text = ""
    while True:
        clock.arm(idle=True)
        line = resp.readline()
        if not line:
            clock.check()
            if finish is not None:
                return result.text, finish
            raise _Failed(
                "stream_cut", 200, detail=f"stream ended without [DONE] after {len(result.text)} chars"
            )
        line = line.strip()
        if not line.startswith(b"data:"):
            continue  # blank separators, comments (": ping"), event/id fields
        data = line[5:].strip()
        if data == b"[DONE]":
            return result.text, finish
        delta, finish = _parse_chunk(data, finish)
        if delta:
            result.text += delta
            if on_delta:
                on_delta(delta)


def _parse_chunk(data: bytes, finish):
    try:
        chunk = json.loads(data)
        if "error" in chunk:
            raise _Failed("stream_cut", 200, detail=f"error event: {str(chunk['error'])[:80]}")
        choice = chunk["choices"][0] if chunk["choices"] else {}
        delta = (choice.get("delta") or {}).get("content")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise _Failed("malformed", 200, detail=f"bad stream event: {data[:80]!r}") from None
    return (delta if isinstance(delta, str) else None), (choice.get("finish_reason") or finish)


def _retry_after(value: str | None) -> float | None:
    """Retry-After: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _excerpt(resp, clock: _Clock) -> str:
    try:
        clock.arm()
        return resp.read(200).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""

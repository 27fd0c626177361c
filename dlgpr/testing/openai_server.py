"""A rule-based OpenAI-compatible chat-completions server for tests and benchmarks, with fault injection.

It answers ``POST /v1/chat/completions`` like a real server would (a ``chat.completion`` JSON
with choices, finish_reason and usage), so the real ``openai`` client, its retries and its
timeouts are exercised end to end on 127.0.0.1:

- the questioner's prompt (its system message mentions ``<question>``) gets a well-formed
  ``<think>..</think><question>..</question>`` reply, the questions taken in turn from
  :data:`QUESTIONS`;
- the answerer's prompt gets the first sentence of the described place that shares a keyword
  with the question, else "I don't know.".

Faults are injected per request, from a FIFO ``schedule`` (consumed one per arriving request,
for sequential tests) or a ``policy`` called on the request body (for concurrent tests, where
arrival order is not fixed). Every request is recorded with its arrival time, and the largest
number of requests in flight at once is tracked.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

QUESTIONS = (
    "What colour is the facade?",
    "Is there a shop sign, and what does it say?",
    "What colour is the door?",
    "Is there an awning over the entrance?",
    "How many floors does the building have?",
    "What is the house number?",
)

STOPWORDS = frozenset("a an and are be does do has have how is it of on or the there this what which with".split())


class Fault(enum.Enum):
    RATE_LIMIT = "rate_limit"
    """HTTP 429 with ``Retry-After: 0``."""
    SERVER_ERROR = "server_error"
    """HTTP 500."""
    TIMEOUT = "timeout"
    """Hold the request for ``timeout_delay_s`` (longer than the client's timeout), then reply."""
    UNAUTHORIZED = "unauthorized"
    """HTTP 401 whose message quotes the bearer token, as real providers do with a bad key."""
    MALFORMED_JSON = "malformed_json"
    """HTTP 200, ``application/json``, a body that is not JSON."""
    NO_CHOICES = "no_choices"
    """HTTP 200, a JSON completion whose ``choices`` list is empty."""
    OFF_FORMAT = "off_format"
    """A well-formed completion whose content is not in the questioner's format."""
    EMPTY_CONTENT = "empty_content"
    """A well-formed completion with empty content."""


@dataclass(frozen=True)
class RecordedRequest:
    body: dict[str, Any]
    headers: dict[str, str]
    """Lower-cased names."""
    arrival: float
    """``time.monotonic()`` when the request was read."""


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of parts."""
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


class FakeOpenAIServer:
    """``with FakeOpenAIServer() as server: ChatAPIConfig(base_url=server.base_url)``.

    Args:
        delay_s: how long a request is held before its reply (to observe concurrency), or a
            function of the request body giving that time (to make replies arrive out of order).
        timeout_delay_s: how long a ``Fault.TIMEOUT`` request is held.

    Attributes:
        schedule: faults of the next arriving requests, in order (``None``: a normal reply).
        policy: once the schedule is empty, the fault of a request given its body, or None.
        responder: consulted first for the reply text of a request (None: not one it knows), e.g.
            the DQ-Cities builder's text expansion, answered from the image's hash.
        requests: every request received, retries included, in arrival order.
        max_in_flight: the most requests being handled at once so far.
    """

    def __init__(self, delay_s: float | Callable[[dict[str, Any]], float] = 0.0, timeout_delay_s: float = 2.0) -> None:
        self.delay_s = delay_s
        self.timeout_delay_s = timeout_delay_s
        self.schedule: deque[Fault | None] = deque()
        self.policy: Callable[[dict[str, Any]], Fault | None] | None = None
        self.responder: Callable[[dict[str, Any]], str | None] | None = None
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._questions = itertools.cycle(QUESTIONS)
        self._ids = itertools.count()
        # Set on shutdown so held requests (delays, timeouts) return at once.
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling ------------------------------------------------------------------

    def _next_fault(self, body: dict[str, Any]) -> Fault | None:
        with self._lock:
            if self.schedule:
                return self.schedule.popleft()
        return self.policy(body) if self.policy is not None else None

    def _reply_text(self, body: dict[str, Any]) -> str:
        if self.responder is not None:
            reply = self.responder(body)
            if reply is not None:
                return reply
        messages = body.get("messages", [])
        system = next((message_text(m) for m in messages if m.get("role") == "system"), "")
        user = next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
        if "<question>" in system:
            with self._lock:
                question = next(self._questions)
            return f"<think>The candidates differ in their visible features; ask about one.</think><question>{question}</question>"
        if system.startswith("You ") and "PlugIR" not in system:
            plugir = plugir_reply(system, user)
            if plugir is not None:
                return plugir
        return answer_from_description(user)

    def _completion(self, body: dict[str, Any], content: str) -> dict[str, Any]:
        prompt_tokens = sum(len(message_text(m).split()) for m in body.get("messages", []))
        completion_tokens = len(content.split())
        return {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 5.0  # seconds an idle keep-alive connection may hold its handler thread

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                    return
                body = json.loads(raw)
                with server._lock:
                    headers = {name.lower(): value for name, value in self.headers.items()}
                    server.requests.append(RecordedRequest(body, headers, time.monotonic()))
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    self._respond(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout) before the reply
                finally:
                    with server._lock:
                        server._in_flight -= 1

            def _respond(self, body: dict[str, Any]) -> None:
                fault = server._next_fault(body)
                if fault is Fault.TIMEOUT:
                    delay = server.timeout_delay_s
                else:
                    delay = server.delay_s(body) if callable(server.delay_s) else server.delay_s
                server._stopping.wait(delay)
                if fault is Fault.RATE_LIMIT:
                    self._send(429, {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}, {"Retry-After": "0"})
                elif fault is Fault.SERVER_ERROR:
                    self._send(500, {"error": {"message": "internal error", "type": "server_error"}})
                elif fault is Fault.UNAUTHORIZED:
                    key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    self._send(401, {"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error"}})
                elif fault is Fault.MALFORMED_JSON:
                    self._send_raw(200, b'{"id": "chatcmpl-broken", "choices": [', "application/json")
                elif fault is Fault.NO_CHOICES:
                    self._send(200, {**server._completion(body, ""), "choices": []})
                elif fault is Fault.OFF_FORMAT:
                    self._send(200, server._completion(body, "Sure! Is the building red?"))
                elif fault is Fault.EMPTY_CONTENT:
                    self._send(200, server._completion(body, ""))
                else:
                    self._send(200, server._completion(body, server._reply_text(body)))

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

            def _send_raw(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def image_sha256s(body: dict[str, Any]) -> list[str]:
    """sha256 of the bytes of every base64 ``image_url`` in a request, in order."""
    out = []
    for message in body.get("messages", []):
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            url = (part.get("image_url") or {}).get("url", "") if part.get("type") == "image_url" else ""
            if url.startswith("data:") and "," in url:
                out.append(hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest())
    return out


def plugir_reply(system: str, user: str) -> str | None:
    """Rule-based replies to the PlugIR language-model steps (dlgpr.dialogue.plugir_llm)."""
    if system.startswith("You summarise"):
        return "They share a facade; they differ in their doors."
    if system.startswith("You propose"):
        return "1. What colour is the door?\n2. Is there a phone booth next to the door?\n3. What is the house number?"
    if system.startswith("You check"):
        return "yes" if "house number" in user.lower() else "no"
    if system.startswith("You imagine"):
        return "The door is red." if "door" in user.lower() else "I don't know."
    if system.startswith("You rewrite"):
        return "A rewritten description: " + " ".join(re.findall(r"A: (.*)", user))
    return None


def answer_from_description(user_text: str) -> str:
    """The first sentence of the remembered description sharing a keyword with the question."""
    m = re.search(r"What you remember about the place:(.*?)\n\s*Question:(.*?)(?:\nAnswer:|$)", user_text, re.DOTALL)
    if m is None:
        return "I don't know."
    description, question = m.group(1), m.group(2)
    keywords = {w for w in re.findall(r"[a-z]+", question.lower()) if w not in STOPWORDS and len(w) > 2}
    for sentence in re.split(r"(?<=[.!?])\s+", description.strip()):
        if keywords & set(re.findall(r"[a-z]+", sentence.lower())):
            return sentence.strip()
    return "I don't know."

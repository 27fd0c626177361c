"""Questioner and simulated user backed by an OpenAI-compatible chat-completions endpoint.

The paper's simulated user is GPT-4o answering from the target's fine-grained description, and
zero-shot questioners (GPT-4o, or a local model served by vLLM / SGLang) are baselines. Both talk
to the same API, so one small client serves them:

- :class:`ChatClient` turns the neutral messages of :mod:`dlgpr.models.prompting` into the
  OpenAI chat format, lets the ``openai`` client do its own retries (exponential backoff on
  429 / 5xx / timeouts / connection errors, ``Retry-After`` honoured), and never raises on a
  bad reply: a request that still fails after its retries comes back as ``ok=False`` with a
  short error kind, so one broken request never stops a dialogue round. A request sends
  exactly what its :class:`ChatAPIConfig` sets (:meth:`ChatAPIConfig.body_fields`): optional
  sampling fields only when set, a ``response_format``, and server extras (``extra_body``).
- :class:`APIQuestioner` and :class:`LLMAnswerer` implement the ``Questioner`` / ``Answerer``
  protocols of :mod:`dlgpr.dialogue.types`; the requests of a round run concurrently, at most
  ``max_concurrency`` at a time.

The API key is read from an environment variable when the client is created and handed to the
``openai`` client only: it is never stored in the config, logged, or put into an error string
(error strings carry the exception's class name, never its message, because providers echo
the offending key in their 401 messages).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

try:  # the "build" extra: a client is only made by what talks to an endpoint
    import openai
    from openai.types import CompletionUsage
    from openai.types.chat import ChatCompletion, ChatCompletionMessage
except ImportError:  # pragma: no cover - exercised by the base-install test in a subprocess
    openai = None  # type: ignore[assignment]
from PIL import Image

from dlgpr.dialogue.prompts import answerer_messages
from dlgpr.data.turns import Answer, AnswerRequest, Question, QuestionRequest
from dlgpr.models.reply_format import parse_question
from dlgpr.models.prompting import questioner_messages
from dlgpr.utils import require_extra

log = logging.getLogger(__name__)

PLACEHOLDER_API_KEY = "EMPTY"
"""Sent when the key variable is unset: local vLLM / SGLang servers accept any key."""

EMPTY_REPLY = "empty_reply"
"""A well-formed completion with null or blank content."""
MALFORMED_REPLY = "malformed_reply"
"""A 200 response that is not a chat completion (not JSON, no choices, no message)."""

RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
"""The ``response_format`` types of the OpenAI chat API (vLLM and SGLang take the same)."""
RESERVED_BODY_FIELDS = frozenset({"model", "messages", "temperature", "max_tokens", "response_format", "stream"})
"""Request-body fields a :class:`ChatAPIConfig` sets itself, refused in its ``extra_body``."""


@dataclass
class ChatAPIConfig:
    """Where and how to call an OpenAI-compatible chat-completions endpoint."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """Endpoint root, ending in ``/v1`` (OpenAI, or a local vLLM / SGLang server)."""
    model: str = "gpt-4o"
    """Model name as the server knows it."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (the key itself never goes into a config)."""
    timeout_s: float = 60.0
    """Per-attempt timeout in seconds."""
    max_retries: int = 4
    """Retries per request after the first attempt, with exponential backoff (openai client)."""
    max_concurrency: int = 8
    """Most requests in flight at once within one round."""
    temperature: float | None = 0.0
    """Sampling temperature (0: as deterministic as the server allows; None: not sent, the server's
    default; reasoning models such as OpenAI's o-series reject the field)."""
    max_tokens: int | None = 512
    """Most tokens generated per reply (None: not sent; reasoning models reject it and take
    ``extra_body: {max_completion_tokens: N}`` instead)."""
    response_format: dict[str, Any] | None = None
    """Sent as the request's ``response_format`` when set, e.g. ``{"type": "json_object"}`` for a JSON
    reply, or ``{"type": "json_schema", "json_schema": {...}}`` (None: not sent)."""
    extra_body: dict[str, Any] | None = None
    """More fields merged into the request body as they are, for what the server offers beyond the
    OpenAI API: vLLM / SGLang guided decoding (``{"guided_json": {...}}``, ``{"guided_choice": [...]}``),
    ``{"chat_template_kwargs": {"enable_thinking": false}}``, ``{"top_k": 20}``, ``max_completion_tokens``.
    Fields this config sets itself (model, messages, temperature, max_tokens, response_format, stream) are refused."""
    send_images: bool = False
    """Show candidates to the questioner as JPEG images (vision endpoints) instead of their descriptions."""
    requests_per_minute: float | None = None
    """Most requests started per minute by this client, retries of the ``openai`` client aside
    (None: no bound). Hosted APIs enforce such a quota; staying under it avoids 429 storms."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if not self.model.strip():
            raise ValueError("model must be a non-empty string")
        if not self.api_key_env.strip():
            raise ValueError("api_key_env must name an environment variable")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2] or None, got {self.temperature}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {self.max_tokens}")
        if self.response_format is not None and (not isinstance(self.response_format, dict)
                                                 or self.response_format.get("type") not in RESPONSE_FORMAT_TYPES):
            raise ValueError(f"response_format must be None or a dict whose type is one of {RESPONSE_FORMAT_TYPES}, got {self.response_format!r}")
        clash = sorted(set(self.extra_body or {}) & RESERVED_BODY_FIELDS)
        if clash:
            raise ValueError(f"extra_body must not set {clash}: set them with the config's own fields (stream is never sent)")
        if self.requests_per_minute is not None and not self.requests_per_minute > 0:
            raise ValueError(f"requests_per_minute must be > 0 or None, got {self.requests_per_minute}")

    def body_fields(self) -> dict[str, Any]:
        """The request-body fields beside ``model`` and ``messages``: the optional ones that are set,
        then ``extra_body``. Exactly what each request of a :class:`ChatClient` sends."""
        fields = {"temperature": self.temperature, "max_tokens": self.max_tokens, "response_format": self.response_format}
        return {**{k: v for k, v in fields.items() if v is not None}, **(self.extra_body or {})}

    def reply_settings(self) -> str:
        """What besides the prompt and the model changes the replies, as a cache key part
        (``t=0.0/max_tokens=512`` for a config that sets nothing else, as before these fields existed)."""
        key = f"t={self.temperature}/max_tokens={self.max_tokens}"
        if self.response_format is not None:
            key += "/response_format=" + json.dumps(self.response_format, sort_keys=True)
        if self.extra_body:
            key += "/extra_body=" + json.dumps(self.extra_body, sort_keys=True)
        return key


@dataclass(frozen=True)
class ChatResult:
    """One chat completion. ``ok=False``: no usable reply; ``error`` says why, ``text`` is None."""

    text: str | None
    ok: bool
    error: str = ""
    """``api_error:<ExceptionClass>`` (after the client's retries), ``malformed_reply`` or ``empty_reply``."""
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class ChatUsage:
    """Running totals of a :class:`ChatClient` (one request = one ``complete`` call, retries included)."""

    requests: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def image_data_url(image: Image.Image, quality: int = 90) -> str:
    """A ``data:image/jpeg;base64,...`` URL of ``image`` (the form vision chat endpoints accept)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def to_openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Neutral messages (text and PIL image parts, see dlgpr.models.prompting) -> OpenAI chat messages.

    A message without images gets plain string content, which every OpenAI-compatible server
    takes (some text-only servers reject the list form); images become ``image_url`` data URLs.
    """
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            if all(part["type"] == "text" for part in content):
                content = "".join(part["text"] for part in content)
            else:
                content = [_openai_part(part) for part in content]
        out.append({"role": message["role"], "content": content})
    return out


def _openai_part(part: dict[str, Any]) -> dict[str, Any]:
    if part["type"] == "text":
        return {"type": "text", "text": part["text"]}
    if part["type"] == "image":
        return {"type": "image_url", "image_url": {"url": image_data_url(part["image"])}}
    if part["type"] == "image_url":  # already encoded (the builder sends the original JPEG bytes)
        return {"type": "image_url", "image_url": {"url": part["url"]}}
    raise ValueError(f"unknown message part type {part['type']!r} (expected 'text', 'image' or 'image_url')")


class RateLimiter:
    """Spaces request starts at least ``60 / requests_per_minute`` seconds apart, across threads."""

    def __init__(self, requests_per_minute: float) -> None:
        self.interval = 60.0 / requests_per_minute
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class ChatClient:
    """Thread-safe chat-completions client that reports failures instead of raising them."""

    def __init__(self, config: ChatAPIConfig) -> None:
        self.config = config
        if openai is None:
            require_extra("openai", "an OpenAI-compatible endpoint client")
        self._openai = openai.OpenAI(
            base_url=config.base_url,
            api_key=os.environ.get(config.api_key_env) or PLACEHOLDER_API_KEY,
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )
        self._lock = threading.Lock()
        self._usage = ChatUsage()
        self._limiter = RateLimiter(config.requests_per_minute) if config.requests_per_minute else None

    def __repr__(self) -> str:
        return f"ChatClient(base_url={self.config.base_url!r}, model={self.config.model!r})"

    @property
    def usage(self) -> ChatUsage:
        """Totals since the client was created."""
        with self._lock:
            return self._usage

    def complete(self, messages: list[dict[str, Any]]) -> ChatResult:
        """One chat completion of neutral ``messages``; never raises on an API or reply failure.

        Raises ``ValueError`` only for a message part of unknown type (a bug in the caller).
        """
        if self._limiter is not None:
            self._limiter.acquire()
        result = self._request(to_openai_messages(messages))
        if not result.ok:
            log.debug("chat request to %s failed: %s", self.config.base_url, result.error)
        with self._lock:
            u = self._usage
            self._usage = ChatUsage(
                requests=u.requests + 1,
                failures=u.failures + (not result.ok),
                prompt_tokens=u.prompt_tokens + result.prompt_tokens,
                completion_tokens=u.completion_tokens + result.completion_tokens,
            )
        return result

    def complete_many(self, batch: list[list[dict[str, Any]]]) -> list[ChatResult]:
        """``complete`` of each message list, at most ``max_concurrency`` in flight; results in input order."""
        if not batch:
            return []
        with ThreadPoolExecutor(max_workers=min(self.config.max_concurrency, len(batch)), thread_name_prefix="chat") as pool:
            results = list(pool.map(self.complete, batch))
        failures = Counter(r.error for r in results if not r.ok)
        if failures:
            log.warning("%d of %d chat requests failed: %s", sum(failures.values()), len(results), dict(failures))
        return results

    def _request(self, messages: list[dict[str, Any]]) -> ChatResult:
        try:
            # every optional field through extra_body, which the openai client merges into the JSON
            # body as it is: a field left unset is then absent, not sent as null
            completion = self._openai.chat.completions.create(
                model=self.config.model,
                messages=messages,  # type: ignore[arg-type]
                extra_body=self.config.body_fields(),
            )
        except openai.OpenAIError as err:
            # The class name only: messages can quote the request, or the key on a 401.
            return ChatResult(text=None, ok=False, error=f"api_error:{type(err).__name__}")
        except ValueError:
            # A body that is not JSON although the server says it is (json.JSONDecodeError).
            return ChatResult(text=None, ok=False, error=MALFORMED_REPLY)

        # Responses are not validated strictly: a body of the wrong shape still parses, into
        # models with raw values in place of missing or mistyped fields (or into a plain string
        # when the server sends no JSON content type), so check every level before use.
        if not isinstance(completion, ChatCompletion):
            return ChatResult(text=None, ok=False, error=MALFORMED_REPLY)
        usage = getattr(completion, "usage", None)
        usage = usage if isinstance(usage, CompletionUsage) else None
        prompt_tokens = _token_count(getattr(usage, "prompt_tokens", None))
        completion_tokens = _token_count(getattr(usage, "completion_tokens", None))
        choices = getattr(completion, "choices", None)
        message = getattr(choices[0], "message", None) if isinstance(choices, list) and choices else None
        if not isinstance(message, ChatCompletionMessage) or not isinstance(message.content, (str, type(None))):
            return ChatResult(text=None, ok=False, error=MALFORMED_REPLY, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        if message.content is None or not message.content.strip():
            # Null content is a legal reply (a refusal, or all of it parsed out as reasoning by the server).
            return ChatResult(text=None, ok=False, error=EMPTY_REPLY, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        return ChatResult(text=message.content, ok=True, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def _token_count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class APIQuestioner:
    """Zero-shot questioner: a chat model asked with the DQ-Pilot prompt, parsed as DQ-Pilot output."""

    def __init__(self, config: ChatAPIConfig) -> None:
        self.config = config
        self.client = ChatClient(config)

    def __repr__(self) -> str:
        return f"APIQuestioner(base_url={self.config.base_url!r}, model={self.config.model!r}, send_images={self.config.send_images})"

    def ask(self, requests: list[QuestionRequest]) -> list[Question]:
        batch = [questioner_messages(req, with_images=self.config.send_images) for req in requests]
        return [self._question(result) for result in self.client.complete_many(batch)]

    @staticmethod
    def _question(result: ChatResult) -> Question:
        if result.ok:
            return parse_question(result.text or "")
        if result.error == EMPTY_REPLY:
            # An empty completion is a reply in the wrong format, as the format reward sees it.
            return parse_question("")
        return Question(text="", ok=False, error=result.error)


class LLMAnswerer:
    """Simulated user: a chat model answering from the target's fine-grained description (GPT-4o in the paper)."""

    def __init__(self, config: ChatAPIConfig) -> None:
        self.config = config
        self.client = ChatClient(config)

    def __repr__(self) -> str:
        return f"LLMAnswerer(base_url={self.config.base_url!r}, model={self.config.model!r})"

    def answer(self, requests: list[AnswerRequest]) -> list[Answer]:
        results = self.client.complete_many([answerer_messages(req) for req in requests])
        return [self._answer(result) for result in results]

    @staticmethod
    def _answer(result: ChatResult) -> Answer:
        if result.ok:
            return Answer(text=(result.text or "").strip())
        if result.error == EMPTY_REPLY:
            return Answer(text="", ok=False, error="empty_answer")
        return Answer(text="", ok=False, error=result.error)

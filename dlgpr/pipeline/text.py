"""Stage 1 of the DQ-Cities builder: text expansion by a vision-language model (DlgPR sec. 3.2).

For every image, a VLM behind an OpenAI-compatible endpoint writes the vague initial caption a
user would give and the fine-grained description (static elements only, no transient objects,
features that tell the place apart). The rules live in a versioned prompt file
(``dlgpr/pipeline/prompts/<name>.txt``); the reply is one JSON object
``{"initial_caption": ..., "description": ...}``.

Robustness, because this stage is hours of paid requests at scale:

- every attempt goes through :class:`~dlgpr.dialogue.api.ChatClient` (bounded concurrency and
  requests per minute); transient failures (429, 5xx, timeouts, connection errors, a body that is
  not a completion, a reply that is not the JSON asked for) are retried with exponential backoff
  and jitter up to ``max_attempts``, then recorded as a failed item that the next run retries;
  errors no retry can fix (bad key, unknown model) stop the stage at once with one line;
- replies are cached on disk by (prompt version, model, image hash): a rebuild, another output
  folder or a changed parser never pays twice for the same image;
- results are appended to an :class:`~dlgpr.pipeline.store.ItemStore` as they complete, so a
  killed run loses only the requests in flight.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import logging
import os
import random
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from dlgpr.dialogue.api import ChatAPIConfig, ChatClient, ChatResult
from dlgpr.pipeline.gsv import GSVImage
from dlgpr.pipeline.store import ItemStore

log = logging.getLogger("dlgpr.pipeline")

FATAL_API_ERRORS = frozenset({"api_error:AuthenticationError", "api_error:PermissionDeniedError", "api_error:NotFoundError"})
"""Failures that every further request would repeat (bad key, no access, unknown model or URL)."""


class StageAborted(RuntimeError):
    """A stage stopped because continuing could not succeed; the message says what to fix."""


# ---- prompts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptFile:
    """A versioned prompt: ``### system`` and ``### user`` sections of a text file."""

    version: str
    system: str
    user: str

    @classmethod
    def load(cls, name: str) -> "PromptFile":
        """``name``: a prompt shipped in ``dlgpr/pipeline/prompts`` (without ``.txt``) or a path to a file."""
        path = Path(name)
        if path.suffix == ".txt" and path.is_file():
            text, version = path.read_text(encoding="utf-8"), path.stem
        else:
            try:
                text = resources.files("dlgpr.pipeline").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8")
            except FileNotFoundError:
                raise FileNotFoundError(f"prompt {name!r}: neither a .txt file nor a prompt in dlgpr/pipeline/prompts") from None
            version = name
        sections = dict(re.findall(r"^### (system|user)\s*\n(.*?)(?=^### |\Z)", text, flags=re.MULTILINE | re.DOTALL))
        if set(sections) != {"system", "user"}:
            raise ValueError(f"prompt {name!r} must have a '### system' and a '### user' section")
        # The version names the exact text: an edited file is a new prompt for the cache.
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        return cls(version=f"{version}@{digest}", system=sections["system"].strip(), user=sections["user"].strip())


# ---- retries -------------------------------------------------------------------------------------


@dataclass
class RetryPolicy:
    """How one item's request is retried (on top of the client's bounded concurrency and rate)."""

    max_attempts: int = 5
    """Attempts per item and run; after the last, the item is recorded as failed (a rerun retries it)."""
    backoff_s: float = 2.0
    """Wait before the second attempt; doubled for each further one (with jitter in [0.5, 1])."""
    max_backoff_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"retry.max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError("retry: need 0 <= backoff_s <= max_backoff_s")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.0)


@dataclass
class Attempted:
    """The outcome of an item after its retries."""

    value: Any
    """The parsed reply, or None when every attempt failed."""
    error: str
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    raw: str | None = None


def complete_with_retries(
    client: ChatClient,
    messages: list[dict[str, Any]],
    parse: Callable[[str], Any],
    policy: RetryPolicy,
    rng: random.Random,
    sleep: Callable[[float], None] = time.sleep,
) -> Attempted:
    """Ask until ``parse(reply)`` succeeds (it raises ``ValueError`` on a bad reply) or attempts run out.

    Raises :class:`StageAborted` on an error no retry can fix.
    """
    tokens = [0, 0]
    error = ""
    for attempt in range(1, policy.max_attempts + 1):
        result: ChatResult = client.complete(messages)
        tokens[0] += result.prompt_tokens
        tokens[1] += result.completion_tokens
        if result.ok:
            try:
                return Attempted(parse(result.text or ""), "", attempt, *tokens, raw=result.text)
            except ValueError as exc:
                error = f"bad_reply:{exc}"
        else:
            if result.error in FATAL_API_ERRORS:
                raise StageAborted(f"{client.config.base_url} refused the request ({result.error.split(':', 1)[1]}): "
                                   f"check the API key (${client.config.api_key_env}), the model name {client.config.model!r} and the URL")
            error = result.error
        if attempt < policy.max_attempts:
            sleep(policy.delay(attempt, rng))
    return Attempted(None, error, policy.max_attempts, *tokens)


def run_items(
    items: Sequence[Any],
    work: Callable[[Any], dict[str, Any]],
    store: ItemStore,
    max_concurrency: int,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """``work(item)`` for each item on ``max_concurrency`` threads; each result is appended to
    ``store`` in this thread as soon as it is done. A :class:`StageAborted` cancels what has not
    started and propagates (finished results are already on disk)."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="stage") as pool:
        pending: set[Future] = set()
        it = iter(items)

        def refill() -> None:
            # A bounded window of submitted work: a huge stage does not queue everything up front.
            for item in itertools.islice(it, max(0, 2 * max_concurrency - len(pending))):
                pending.add(pool.submit(work, item))

        try:
            refill()
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    result = fut.result()
                    store.append([result])
                    if progress is not None:
                        progress(result)
                refill()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


# ---- the stage -----------------------------------------------------------------------------------


@dataclass
class TextExpansionConfig:
    """Stage 1: the VLM that writes captions and descriptions, and how its replies are checked."""

    api: ChatAPIConfig = field(default_factory=lambda: ChatAPIConfig(model="Qwen/Qwen2.5-VL-72B-Instruct", max_tokens=400, max_retries=0))
    """The endpoint (OpenAI, or a local vLLM / SGLang server). Its ``max_retries`` is forced to 0:
    this stage retries itself (``retry``), so each attempt counts against ``requests_per_minute``."""
    prompt: str = "text_expansion_v1"
    """Prompt name in ``dlgpr/pipeline/prompts`` or a path to a ``.txt`` prompt file."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    image_max_side: int | None = None
    """Longer images are resized (JPEG q90) before sending; None sends the file's own bytes."""
    caption_words: tuple[int, int] = (3, 40)
    """Accepted length of the initial caption, in words."""
    description_words: tuple[int, int] = (30, 400)
    """Accepted length of the description, in words (the prompt asks for 100-200)."""

    def __post_init__(self) -> None:
        for name in ("caption_words", "description_words"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"text.{name} must be (min, max) with 1 <= min <= max, got {(lo, hi)}")
            setattr(self, name, (int(lo), int(hi)))
        if self.image_max_side is not None and self.image_max_side < 32:
            raise ValueError(f"text.image_max_side must be >= 32 or None, got {self.image_max_side}")


def reply_json_object(reply: str) -> dict[str, Any]:
    """The outermost ``{...}`` of a model's reply as a dict (code fences or a sentence around it
    are tolerated); ``ValueError`` says why there is none."""
    start, end = reply.find("{"), reply.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object")
    try:
        obj = json.loads(reply[start : end + 1])
    except json.JSONDecodeError:
        raise ValueError("JSON does not parse") from None
    if not isinstance(obj, dict):
        raise ValueError("JSON is not an object")
    return obj


def parse_texts(reply: str, caption_words: tuple[int, int] = (3, 40), description_words: tuple[int, int] = (30, 400)) -> dict[str, str]:
    """``{"initial_caption", "description"}`` from a reply; ``ValueError`` names what is wrong.

    Takes the outermost ``{...}`` of the reply, so code fences or a sentence around the object
    are tolerated; whitespace is normalised.
    """
    obj = reply_json_object(reply)
    out = {}
    for name, (lo, hi) in (("initial_caption", caption_words), ("description", description_words)):
        value = obj.get(name)
        if not isinstance(value, str):
            raise ValueError(f"{name} missing or not a string")
        value = " ".join(value.split())
        if not lo <= len(value.split()) <= hi:
            raise ValueError(f"{name} has {len(value.split())} words, outside [{lo}, {hi}]")
        out[name] = value
    return out


def image_payload(path: Path, max_side: int | None) -> tuple[str, str]:
    """``(sha256 of the file, data URL)``; raises ``OSError`` / ``PIL.UnidentifiedImageError`` on a bad image."""
    return image_bytes_payload(path.read_bytes(), max_side)


def image_bytes_payload(data: bytes, max_side: int | None) -> tuple[str, str]:
    """``(sha256 of the bytes, data URL)`` of an image file's bytes, resized when longer than ``max_side``."""
    digest = hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # decode fully: a truncated file fails here, not at the server
        if max_side is not None and max(im.size) > max_side:
            scale = max_side / max(im.size)
            im = im.convert("RGB").resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=90)
            data = buf.getvalue()
    return digest, "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


class ResponseCache:
    """Replies on disk, one small JSON file per (prompt version, model, image hash)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def _path(self, prompt_version: str, model: str, image_sha: str) -> Path:
        key = hashlib.sha256(f"{prompt_version}\n{model}\n{image_sha}".encode()).hexdigest()
        return self.root / key[:2] / f"{key}.json"

    def get(self, prompt_version: str, model: str, image_sha: str) -> dict[str, Any] | None:
        path = self._path(prompt_version, model, image_sha)
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def put(self, prompt_version: str, model: str, image_sha: str, entry: dict[str, Any]) -> None:
        path = self._path(prompt_version, model, image_sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")  # one writer per thread
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, path)


class TextExpander:
    """Writes one stage-1 result per image (``work(image) -> dict``) for :func:`run_items`."""

    def __init__(self, config: TextExpansionConfig, cache_dir: str | os.PathLike, seed: int = 0) -> None:
        self.config = config
        self.prompt = PromptFile.load(config.prompt)
        self.client = ChatClient(replace(config.api, max_retries=0))
        self.cache = ResponseCache(cache_dir)
        self.seed = seed

    def _parse(self, reply: str) -> dict[str, str]:
        return parse_texts(reply, self.config.caption_words, self.config.description_words)

    def messages(self, data_url: str) -> list[dict[str, Any]]:
        return [
            {"role": "system", "content": [{"type": "text", "text": self.prompt.system}]},
            {"role": "user", "content": [{"type": "image_url", "url": data_url}, {"type": "text", "text": self.prompt.user}]},
        ]

    def __call__(self, image: GSVImage) -> dict[str, Any]:
        base = {"key": image.key, "prompt_version": self.prompt.version, "model": self.config.api.model}
        try:
            digest, url = image_payload(image.path, self.config.image_max_side)
        except (OSError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
            return {**base, "ok": False, "error": f"bad_image:{type(exc).__name__}", "attempts": 0}
        cached = self.cache.get(self.prompt.version, self.config.api.model, digest)
        if cached is not None:
            try:
                return {**base, "ok": True, "image_sha256": digest, "cached": True, "attempts": 0,
                        "prompt_tokens": 0, "completion_tokens": 0, **self._parse(cached["text"])}
            except (ValueError, KeyError, TypeError):
                pass  # a reply the current parser rejects: ask again
        rng = random.Random(f"{self.seed}/{image.key}")
        got = complete_with_retries(self.client, self.messages(url), self._parse, self.config.retry, rng)
        usage = {"attempts": got.attempts, "prompt_tokens": got.prompt_tokens, "completion_tokens": got.completion_tokens}
        if got.value is None:
            return {**base, "ok": False, "error": got.error, "image_sha256": digest, **usage}
        self.cache.put(self.prompt.version, self.config.api.model, digest,
                       {"text": got.raw, "prompt_tokens": got.prompt_tokens, "completion_tokens": got.completion_tokens})
        return {**base, "ok": True, "image_sha256": digest, "cached": False, **usage, **got.value}


__all__ = [
    "Attempted", "PromptFile", "ResponseCache", "RetryPolicy", "StageAborted", "TextExpander", "TextExpansionConfig",
    "complete_with_retries", "image_bytes_payload", "image_payload", "parse_texts", "reply_json_object", "run_items",
]

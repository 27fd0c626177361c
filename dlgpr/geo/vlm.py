"""Language-model geolocators: a local Hugging Face model or an OpenAI-compatible endpoint, asked
with GLOBE's evaluation prompt (:data:`dlgpr.geo.answer.GLOBE_PROMPT`) and read with its parser.

Both send one message per image: GLOBE's system message, then the image followed by the prompt
(for a text-only causal LM the image part is left out: it answers blind, a prior baseline and a
plumbing test). The reply is parsed by :func:`~dlgpr.geo.answer.parse_answer`; a reply that
gives no place is a failed prediction (``ok=False``, ``error`` the parser's failure kind) that
keeps the raw text and the reasoning for audits. Failure kinds are counted in ``stats``.

- :class:`HFGeoPredictor`: any causal LM or vision-language model (Qwen2.5-VL, the GLOBE
  checkpoints), loaded and run through the questioner's generation path
  (:class:`dlgpr.dialogue.hf.HFQuestioner`: left-padded batches, the chat template, images
  through the processor). Greedy by default; ``temperature > 0`` samples (GLOBE used 0.1).
- :class:`EndpointGeoPredictor`: a vLLM / SGLang / OpenAI endpoint (GLOBE's own evaluation
  serves its model with vLLM), the image sent as a data URL; transient failures (429, 5xx,
  timeouts, a body that is not a completion, an empty reply) are retried with backoff
  (:func:`dlgpr.pipeline.text.complete_with_retries`); a reply in the wrong format is not
  retried (it is the model's answer). Replies can be cached on disk by (prompt version and
  sampling settings, model, image hash), so a rerun or another output folder never pays twice.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Sequence

from PIL import Image

from dlgpr.data.geo import GeoSample
from dlgpr.dialogue.api import ChatAPIConfig, ChatClient
from dlgpr.dialogue.hf import HFQuestioner, HFQuestionerConfig, load_questioner
from dlgpr.geo.answer import GLOBE_PROMPT, GLOBE_PROMPT_VERSION, GLOBE_SYSTEM, parse_answer
from dlgpr.geo.geolocator import BAD_IMAGE, decode_images
from dlgpr.geo.predict import GeoPrediction
from dlgpr.models.prompting import Messages
from dlgpr.pipeline.text import ResponseCache, RetryPolicy, complete_with_retries, image_bytes_payload

__all__ = ["EndpointGeoPredictor", "HFGeoPredictor", "answer_prediction", "globe_messages"]


def globe_messages(image: Image.Image | str | None) -> Messages:
    """GLOBE's evaluation messages for one image: a PIL image, a data URL (endpoints), or None (text only)."""
    parts: list[dict[str, Any]] = []
    if isinstance(image, str):
        parts.append({"type": "image_url", "url": image})
    elif image is not None:
        parts.append({"type": "image", "image": image})
    parts.append({"type": "text", "text": GLOBE_PROMPT})
    return [{"role": "system", "content": [{"type": "text", "text": GLOBE_SYSTEM}]}, {"role": "user", "content": parts}]


def answer_prediction(key: str, raw: str, **extra: Any) -> GeoPrediction:
    """A model's reply as a prediction: the parsed names, or ``ok=False`` with the parser's failure
    kind; the raw reply and the reasoning are kept either way, ``extra["well_formed"]`` says
    whether the reply was exactly ``<think>..</think><answer>..</answer>``."""
    a = parse_answer(raw)
    return GeoPrediction(key=key, ok=a.ok, error=a.error, city=a.city, country=a.country, reasoning=a.reasoning, raw=raw,
                         extra={"well_formed": a.well_formed, **extra})


class HFGeoPredictor:
    """A local causal LM or vision-language model asked GLOBE's question (see the module docstring).

    Args:
        model: Hugging Face model id or local directory (a GLOBE or Qwen2.5-VL checkpoint).
        gguf_file, dtype, device, trust_remote_code: how to load it (as for the questioners:
            :class:`dlgpr.dialogue.hf.HFQuestionerConfig`).
        max_new_tokens: reply length limit, reasoning included (GLOBE: 512).
        temperature: 0 decodes greedily; above 0 samples at that temperature (GLOBE: 0.1).
        top_p: nucleus mass when sampling.
        batch_size: prompts per ``generate`` call.
        max_prompt_tokens: longer prompts are cut on the left (never into image tokens).
        name: the method's name in tables.

    The model is loaded on the first prediction.
    """

    def __init__(self, model: str, gguf_file: str | None = None, dtype: str = "auto", device: str = "auto",
                 max_new_tokens: int = 512, temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 8,
                 max_prompt_tokens: int = 4096, trust_remote_code: bool = False, name: str = "hf") -> None:
        if temperature < 0:
            raise ValueError(f"HFGeoPredictor.temperature must be >= 0 (0: greedy), got {temperature}")
        self.config = HFQuestionerConfig(
            model=model, gguf_file=gguf_file, dtype=dtype, device=device, max_new_tokens=max_new_tokens,
            do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0, top_p=top_p,
            batch_size=batch_size, max_prompt_tokens=max_prompt_tokens, trust_remote_code=trust_remote_code)
        self.name = name
        self.stats: Counter = Counter()
        self._runner: HFQuestioner | None = None

    @classmethod
    def from_model(cls, model: Any, processor: Any, name: str = "hf", **settings: Any) -> "HFGeoPredictor":
        """Wrap a model and its tokenizer or processor that already exist (a policy in training)."""
        self = cls(model=getattr(getattr(model, "config", None), "name_or_path", "") or "in-memory", name=name, **settings)
        self._runner = HFQuestioner(model, processor, self.config)
        return self

    def __repr__(self) -> str:
        return f"HFGeoPredictor(name={self.name!r}, model={self.config.model!r})"

    @property
    def runner(self) -> HFQuestioner:
        """The generation path (loads the model on first use)."""
        if self._runner is None:
            self._runner = HFQuestioner(*load_questioner(self.config), self.config)
        return self._runner

    def predict(self, samples: Sequence[GeoSample]) -> list[GeoPrediction]:
        """One prediction per sample, in order; ``batch_size`` images decoded and generated at a time."""
        samples = list(samples)
        runner = self.runner
        out: list[GeoPrediction] = []
        for start in range(0, len(samples), self.config.batch_size):
            chunk = samples[start:start + self.config.batch_size]
            images = decode_images(chunk, self.stats)
            good = [i for i, im in enumerate(images) if im is not None]
            prompts = [globe_messages(images[i] if runner.with_images else None) for i in good]
            replies = dict(zip(good, runner.generate_raw(prompts) if prompts else []))
            for i, s in enumerate(chunk):
                if i not in replies:
                    out.append(GeoPrediction.failed(s.key, BAD_IMAGE))
                    continue
                pred = answer_prediction(s.key, replies[i])
                if not pred.ok:
                    self.stats[pred.error] += 1
                out.append(pred)
        return out


class EndpointGeoPredictor:
    """An OpenAI-compatible chat endpoint asked GLOBE's question (see the module docstring).

    Args:
        api: the endpoint (``base_url``, ``model``, ``temperature``: GLOBE used 0.1,
            ``max_tokens``: 512, ``max_concurrency``, ``requests_per_minute``). Its
            ``max_retries`` is forced to 0: ``retry`` retries each request itself.
        retry: attempts and backoff per image.
        cache_dir: replies cached on disk here (None: no cache).
        image_max_side: longer images are resized (JPEG q90) before sending; None sends the
            image file's own bytes.
        name: the method's name in tables.
        seed: of the retry jitter.

    A key the server refuses, or an unknown model, stops the evaluation at once with one line
    (:class:`dlgpr.pipeline.text.StageAborted`); every other failure is a failed prediction.
    """

    def __init__(self, api: ChatAPIConfig, retry: RetryPolicy | None = None, cache_dir: str | None = None,
                 image_max_side: int | None = None, name: str = "endpoint", seed: int = 0) -> None:
        if image_max_side is not None and image_max_side < 32:
            raise ValueError(f"EndpointGeoPredictor.image_max_side must be >= 32 or None, got {image_max_side}")
        self.api, self.retry = api, retry or RetryPolicy()
        self.cache = ResponseCache(cache_dir) if cache_dir else None
        self.image_max_side, self.name, self.seed = image_max_side, name, seed
        self.client = ChatClient(replace(api, max_retries=0))
        prompt_sha = hashlib.sha256(f"{GLOBE_SYSTEM}\n{GLOBE_PROMPT}".encode()).hexdigest()[:8]
        # what else changes the reply: sampling settings and the image size sent
        self.cache_version = f"{GLOBE_PROMPT_VERSION}@{prompt_sha}/{api.reply_settings()}/side={image_max_side}"
        self.stats: Counter = Counter()

    def __repr__(self) -> str:
        return f"EndpointGeoPredictor(name={self.name!r}, base_url={self.api.base_url!r}, model={self.api.model!r})"

    def _one(self, sample: GeoSample) -> GeoPrediction:
        try:
            digest, url = image_bytes_payload(sample.image_data(), self.image_max_side)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return GeoPrediction.failed(sample.key, BAD_IMAGE)
        if self.cache is not None:
            cached = self.cache.get(self.cache_version, self.api.model, digest)
            if cached is not None and isinstance(cached.get("text"), str):
                return answer_prediction(sample.key, cached["text"], cached=True)
        rng = random.Random(f"{self.seed}/{sample.key}")
        got = complete_with_retries(self.client, globe_messages(url), lambda text: text, self.retry, rng)
        usage = {"attempts": got.attempts, "prompt_tokens": got.prompt_tokens, "completion_tokens": got.completion_tokens}
        if got.value is None:
            return GeoPrediction.failed(sample.key, got.error, **usage)
        if self.cache is not None:
            self.cache.put(self.cache_version, self.api.model, digest, {"text": got.raw, **usage})
        return answer_prediction(sample.key, got.value, cached=False, **usage)

    def predict(self, samples: Sequence[GeoSample]) -> list[GeoPrediction]:
        """One prediction per sample, in order; at most ``api.max_concurrency`` requests in flight."""
        samples = list(samples)
        if not samples:
            return []
        with ThreadPoolExecutor(max_workers=min(self.api.max_concurrency, len(samples)), thread_name_prefix="geo") as pool:
            preds = list(pool.map(self._one, samples))
        self.stats.update(p.error for p in preds if not p.ok)
        return preds

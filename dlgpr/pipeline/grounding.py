"""Step 2 of the "regions" stage of the DQ-Cities builder: phrases grounded to boxes with YOLO-World (DlgPR sec. 3.2).

The phrases of a description (``dlgpr.pipeline.phrases``) are grounded in its image with the
open-vocabulary detector YOLO-World (ultralytics) (:class:`YOLOWorldGrounder`): the phrases of
an image are its class names for one forward pass, embedded by an open_clip text tower; every
phrase gets the box of its highest-scoring anchor, kept when that score reaches ``conf``, and
becomes a :class:`~dlgpr.data.schema.Region` of the record (:func:`to_regions`). Everything runs
offline: the detector is built from its ultralytics yaml and loads weights from a local file,
and ultralytics' own CLIP path (which downloads OpenAI's package and weights) is never used.

ultralytics and open_clip are imported where they are first used: each takes seconds to
import. ``dlgpr`` is always imported before ultralytics here (this module belongs to it), which
keeps ultralytics offline and out of the home folder (:mod:`dlgpr._env`).
"""

from __future__ import annotations

import logging
import math
import pickle
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from dlgpr._env import cache_dir
from dlgpr.data.schema import Region
from dlgpr.utils import require_extra

__all__ = [
    "GroundingConfig",
    "GroundedPhrase",
    "YOLOWorldGrounder",
    "letterbox",
    "boxes_to_unit",
    "to_regions",
]

log = logging.getLogger("dlgpr.pipeline")

#: ultralytics' letterbox grey.
_PAD_VALUE = 114


@dataclass
class GroundingConfig:
    """Which detector and text tower ground the phrases, and how."""

    model: str = "yolov8s-worldv2.yaml"
    """ultralytics model yaml of the YOLO-World architecture (scale from the name, as ultralytics does)."""
    weights: str | None = None
    """Local detector weights: a state_dict file or an ultralytics checkpoint (its ``model``
    module). None keeps the random initialisation (tests and benchmarks only)."""
    clip_model: str = "ViT-B-32"
    """open_clip architecture of the class-text embeddings; its embedding width must be the
    detector's (512 for YOLO-World v2, whose weights were trained with ViT-B-32 text features)."""
    clip_pretrained: str | None = "openai"
    """open_clip pretrained tag (downloaded into the project cache), a local checkpoint file,
    or None for random weights (tests)."""
    imgsz: int = 640
    """Side of the square letterboxed input, in pixels (a multiple of the detector's stride 32)."""
    conf: float = 0.05
    """Smallest score of a phrase's best box; a phrase below it gets no region."""
    device: str = "cpu"
    """Torch device of both models."""
    phrase_batch: int = 256
    """Phrases per text-tower forward pass."""
    image_batch: int = 1
    """Images per detector forward pass in :meth:`YOLOWorldGrounder.ground_many`. On a CPU one per
    pass is fastest (scripts/bench_regions.py: 6.0 vs 3.6 images/s with 8); batches are for GPUs."""
    phrase_cache_size: int = 200_000
    """Phrase embeddings kept for reuse (first in, first out; 0 disables the cache). At 512
    float32 values a phrase, the default holds about 400 MB."""

    def __post_init__(self) -> None:
        checks = {
            "model": bool(self.model),
            "clip_model": bool(self.clip_model),
            "imgsz": self.imgsz >= 32 and self.imgsz % 32 == 0,
            "conf": 0.0 <= self.conf <= 1.0,
            "phrase_batch": self.phrase_batch >= 1,
            "image_batch": self.image_batch >= 1,
            "phrase_cache_size": self.phrase_cache_size >= 0,
        }
        hints = {"imgsz": "a positive multiple of 32", "conf": "in [0, 1]", "phrase_cache_size": ">= 0",
                 "model": "a non-empty yaml name", "clip_model": "a non-empty open_clip name"}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"GroundingConfig.{name} must be {hints.get(name, '>= 1')}, got {getattr(self, name)!r}")


class GroundedPhrase(NamedTuple):
    """A phrase, the image-relative box ``(x0, y0, x1, y1)`` of its best anchor, and its score."""

    phrase: str
    box: tuple[float, float, float, float]
    score: float


def letterbox(image: Image.Image, imgsz: int) -> tuple[Tensor, float, tuple[int, int]]:
    """Resize ``image`` so its long side is ``imgsz`` and centre it on a grey square.

    Returns the ``[3, imgsz, imgsz]`` RGB tensor in [0, 1], the scale applied and the
    ``(pad_x, pad_y)`` offset of the image in the square, in pixels.
    """
    width, height = image.size
    scale = imgsz / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    pad_x, pad_y = (imgsz - new_w) // 2, (imgsz - new_h) // 2
    resized = image.convert("RGB").resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = torch.full((3, imgsz, imgsz), _PAD_VALUE, dtype=torch.uint8)  # [3, S, S]
    canvas[:, pad_y : pad_y + new_h, pad_x : pad_x + new_w] = torch.from_numpy(np.array(resized)).permute(2, 0, 1)
    return canvas.float() / 255.0, scale, (pad_x, pad_y)


def boxes_to_unit(xyxy: Tensor, scale: float, pad: tuple[float, float], width: int, height: int) -> Tensor:
    """Map ``[N, 4]`` xyxy boxes in letterboxed pixels to the original image, as fractions in [0, 1]."""
    pad_x, pad_y = pad
    offset = xyxy.new_tensor([pad_x, pad_y, pad_x, pad_y])
    size = xyxy.new_tensor([width, height, width, height])
    return ((xyxy - offset) / scale / size).clamp(0.0, 1.0)  # [N, 4]


def to_regions(grounded: Iterable[tuple[str, tuple[float, float, float, float], float]]) -> tuple[Region, ...]:
    """The :class:`Region` records of grounding output (scores are not stored)."""
    return tuple(Region(phrase=phrase, box=tuple(float(v) for v in box)) for phrase, box, _ in grounded)  # type: ignore[arg-type]


def _detector_state_dict(path: str) -> dict[str, Tensor]:
    """Weights of a detector from a state_dict file or an ultralytics checkpoint.

    Of a checkpoint, the ``ema`` module is taken when there is one (a checkpoint saved during
    training), else ``model``, as ultralytics loads them.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # ultralytics checkpoints pickle the model module itself, which the safe loader refuses;
        # like ultralytics, trust the local file the config names.
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict):
        obj = next((obj[k] for k in ("ema", "model") if isinstance(obj.get(k), nn.Module)), obj)
    if isinstance(obj, nn.Module):
        return obj.float().state_dict()
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    raise ValueError(f"{path}: neither a state_dict nor an ultralytics checkpoint with a 'model' module")


class YOLOWorldGrounder:
    """Ground phrases in images with YOLO-World and open_clip text embeddings, offline.

    ``ground(image, phrases)`` gives one :class:`GroundedPhrase` per distinct phrase whose best
    box scores at least ``conf``; ``ground_many`` does the same for many images, batched.
    Attributes: ``detector`` (the ultralytics ``WorldModel``), ``text_model`` (the open_clip
    model, its image tower removed) and ``tokenizer``.
    """

    def __init__(self, config: GroundingConfig) -> None:
        import open_clip

        from dlgpr._env import restore_pil_open

        WorldModel = require_extra("ultralytics.nn.tasks", "YOLO-World grounding").WorldModel

        restore_pil_open()  # a corrupt image must stay Pillow's error, a counted bad sample
        self.config = config
        self.device = torch.device(config.device)
        # Built with the yaml's own class count: the head's width depends on it, so checkpoints
        # load; the classes of a call are set on the head per call, as WorldModel.set_classes does.
        self.detector = WorldModel(cfg=config.model, verbose=False)
        if config.weights is None:
            log.warning("YOLO-World %s has random weights: its boxes are meaningless (tests and benchmarks only)", config.model)
        else:
            self._load_detector_weights(config.weights)
        self.detector.to(self.device).eval().requires_grad_(False)
        self.text_dim = int(self.detector.model[-1].cv3[0][-1].out_channels)

        clip_config = open_clip.get_model_config(config.clip_model)
        if clip_config is None:
            raise ValueError(f"clip_model {config.clip_model!r} is not an open_clip architecture (see open_clip.list_models())")
        if int(clip_config["embed_dim"]) != self.text_dim:
            raise ValueError(
                f"clip_model {config.clip_model!r} embeds text in {clip_config['embed_dim']} dims but the head of "
                f"{config.model!r} takes {self.text_dim}-dim class embeddings"
            )
        self.text_model = open_clip.create_model(
            config.clip_model, pretrained=config.clip_pretrained, device=self.device, cache_dir=str(cache_dir() / "open_clip")
        )
        # Only the text tower is used; the image tower (88M parameters for ViT-B-32) is freed.
        self.text_model.visual = None
        self.text_model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(config.clip_model)
        # CLIP's text tower is causal and pools at the end-of-text token, the largest id; the
        # positions after it are padding that the pooled feature never sees. Such towers run on
        # the batch's longest phrase instead of the full 77-token context: same embeddings,
        # several times cheaper (phrases are a few tokens).
        model = self.text_model
        self._causal_text = (
            isinstance(model, open_clip.CLIP) and model.text_pool_type == "argmax" and model.attn_mask is not None
        )
        self._cache: dict[str, Tensor] = {}

    def _load_detector_weights(self, path: str) -> None:
        state, own = _detector_state_dict(path), self.detector.state_dict()
        missing, unexpected = own.keys() - state.keys(), state.keys() - own.keys()
        reshaped = {k for k in own.keys() & state.keys() if own[k].shape != state[k].shape}
        if missing or unexpected or reshaped:
            first = sorted(missing | unexpected | reshaped)[0]
            raise ValueError(
                f"weights {path} do not fit {self.config.model} (another scale?): {len(missing)} missing, "
                f"{len(unexpected)} unexpected and {len(reshaped)} reshaped tensors, e.g. {first!r}"
            )
        self.detector.load_state_dict(state)

    # -- text ------------------------------------------------------------------------------------

    def _encode(self, tokens: Tensor) -> Tensor:
        """``[P, L]`` token ids -> ``[P, D]`` L2-normalised text embeddings."""
        model = self.text_model
        if not self._causal_text:
            return model.encode_text(tokens, normalize=True)
        eot = tokens.argmax(dim=-1)  # [P]
        length = int(eot.max()) + 1
        tokens = tokens[:, :length]  # [P, L']
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)  # [P, L', W]
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])  # [P, L', W]
        x = model.ln_final(x[torch.arange(len(tokens), device=tokens.device), eot])  # [P, W]
        proj = model.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj  # [P, D]
        return F.normalize(x, dim=-1)

    def clear_phrase_cache(self) -> None:
        """Forget every cached phrase embedding."""
        self._cache.clear()

    @torch.inference_mode()
    def embed_phrases(self, phrases: Sequence[str]) -> Tensor:
        """``[P, D]`` L2-normalised text embeddings of ``phrases`` (D = 512 for ViT-B-32).

        Each distinct phrase is embedded once and cached, so the phrases that recur across
        descriptions ("the door", "a street lamp") cost one text forward for the whole build.
        """
        found = {p: self._cache[p] for p in dict.fromkeys(phrases) if p in self._cache}
        missing = [p for p in dict.fromkeys(phrases) if p not in found]
        if missing:
            tokens = self.tokenizer(missing)  # [M, 77]
            # Batches of similar length, so the causal path pads little.
            order = torch.argsort(tokens.argmax(dim=-1), stable=True).tolist()
            for start in range(0, len(order), self.config.phrase_batch):
                index = order[start : start + self.config.phrase_batch]
                embeddings = self._encode(tokens[index].to(self.device))  # [b, D]
                found.update((missing[i], e) for i, e in zip(index, embeddings))
            size = self.config.phrase_cache_size
            for p in missing[-size:] if size else ():
                self._cache[p] = found[p]
            while len(self._cache) > size:
                del self._cache[next(iter(self._cache))]
        if not phrases:
            return torch.empty(0, self.text_dim, device=self.device)
        return torch.stack([found[p] for p in phrases])  # [P, D]

    # -- images ----------------------------------------------------------------------------------

    def ground(self, image: Image.Image, phrases: Sequence[str]) -> list[GroundedPhrase]:
        """Best box of every distinct phrase in ``image`` (those scoring at least ``conf``)."""
        return self.ground_many([image], [phrases])[0]

    def ground_many(
        self, images: Sequence[Image.Image], phrases_per_image: Sequence[Sequence[str]]
    ) -> list[list[GroundedPhrase]]:
        """:meth:`ground` for each image with its own phrases, ``image_batch`` images per forward."""
        if len(images) != len(phrases_per_image):
            raise ValueError(f"got {len(images)} images but {len(phrases_per_image)} phrase lists")
        results: list[list[GroundedPhrase]] = [[] for _ in images]
        todo = [i for i, phrases in enumerate(phrases_per_image) if phrases]
        for start in range(0, len(todo), self.config.image_batch):
            batch = todo[start : start + self.config.image_batch]
            grounded = self._ground_batch([images[i] for i in batch], [list(dict.fromkeys(phrases_per_image[i])) for i in batch])
            for i, g in zip(batch, grounded):
                results[i] = g
        return results

    @torch.inference_mode()
    def _ground_batch(self, images: list[Image.Image], classes: list[list[str]]) -> list[list[GroundedPhrase]]:
        nc = max(len(c) for c in classes)
        # One class count per forward: each image's list is padded with repeats of its own
        # phrases. The head scores every class on its own and the text-guided attention takes a
        # max over classes, so repeats change nothing for that image.
        padded = [(c * math.ceil(nc / len(c)))[:nc] for c in classes]
        txt_feats = torch.stack([self.embed_phrases(p) for p in padded])  # [B, nc, D]
        boxed = [letterbox(image, self.config.imgsz) for image in images]
        x = torch.stack([t for t, _, _ in boxed]).to(self.device)  # [B, 3, S, S]
        self.detector.model[-1].nc = nc
        # In eval mode WorldDetect returns (decoded, raw): decoded is [B, 4 + nc, A], xywh boxes
        # in input pixels, then the sigmoid class scores.
        decoded = self.detector.predict(x, txt_feats=txt_feats)[0]  # [B, 4 + nc, A]
        scores, best = decoded[:, 4:].max(dim=-1)  # [B, nc]
        xywh = decoded[:, :4].gather(2, best[:, None].expand(-1, 4, -1)).transpose(1, 2)  # [B, nc, 4]
        xyxy = torch.cat((xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2), dim=-1)  # [B, nc, 4]
        out: list[list[GroundedPhrase]] = []
        for b, (image, (_, scale, pad), phrases) in enumerate(zip(images, boxed, classes)):
            n = len(phrases)
            unit = boxes_to_unit(xyxy[b, :n].float().cpu(), scale, pad, *image.size).tolist()  # [n, 4]
            out.append([
                GroundedPhrase(phrase, (x0, y0, x1, y1), score)
                for phrase, (x0, y0, x1, y1), score in zip(phrases, unit, scores[b, :n].tolist())
                if score >= self.config.conf and x0 < x1 and y0 < y1
            ])
        return out

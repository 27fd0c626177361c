"""CLIP backbone: a thin wrapper around open_clip.

Any open_clip architecture works (``ViT-B-16`` with ``pretrained="openai"`` is the paper's
backbone). dlgpr registers its own small architectures from ``model_configs/*.json`` (e.g.
``dlgpr-tiny``: a 4-layer ViT on 64 px with 8 px patches and a 4-layer text tower, 128-d
embeddings) so tests and the embedded default build a CLIP from its config without any
download. ``pretrained`` is an open_clip tag (downloaded to ``cache_dir`` by open_clip), one of
dlgpr's own tags for its own architectures (``synthcities``: weights shipped inside the package,
see :data:`DLGPR_PRETRAINED`), a local checkpoint path, or ``None`` for random initialisation.

Long text: ``long_text_length`` extends the text positional embedding beyond the architecture's
77 positions by linear interpolation (Long-CLIP keeps the first 20 positions and stretches the
rest 4x to 248), after the weights are loaded, so it applies to pretrained and fresh towers
alike; the tokenizer's context follows. Layer taps: :meth:`CLIPBackbone.image_taps` and
:meth:`CLIPBackbone.text_taps` return the token states after chosen blocks (and the [CLS]
attention of those blocks), for multi-level heads such as CMPL. The image side is open_clip's
public ``forward_intermediates``; the text side runs the blocks itself, because open_clip's
``CLIP.forward_intermediates`` adds the whole positional table and the whole causal mask (every
batch padded to the full 248-token context) and has no padding mask for bidirectional towers:
the loop here is the same computation on the batch's own length (the test compares the two).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import open_clip
import torch
from open_clip.model import text_global_pool
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)
_PRETRAINED_DIR = Path(__file__).parent / "pretrained"

#: Weights dlgpr ships for its own architectures, ``(model_name, tag) -> file`` in
#: ``dlgpr/models/pretrained/``. ``pretrained: <tag>`` resolves them the way open_clip resolves
#: ``openai`` for ``ViT-B-16``, with nothing to download. How each file was made (command,
#: world, CPU time) is in the JSON file of the same name beside it.
DLGPR_PRETRAINED: dict[tuple[str, str], str] = {
    ("dlgpr-mini", "synthcities"): "dlgpr-mini-synthcities.safetensors",
}


def resolve_pretrained(model_name: str, pretrained: str | None) -> str | None:
    """The ``pretrained`` argument for open_clip: a dlgpr tag becomes its shipped file; an open_clip
    tag, a path or None pass through unchanged."""
    if pretrained is None or (model_name, pretrained) not in DLGPR_PRETRAINED:
        return pretrained
    path = _PRETRAINED_DIR / DLGPR_PRETRAINED[(model_name, pretrained)]
    if not path.is_file():
        raise FileNotFoundError(f"pretrained {pretrained!r} of {model_name}: {path} is missing (rebuild it with scripts/pretrain_synthcities.py)")
    return str(path)

__all__ = ["ClipBackboneConfig", "CLIPBackbone", "ClipTokenizer", "stretch_positions", "ImageTaps", "TextTaps", "DLGPR_PRETRAINED", "resolve_pretrained"]

log = logging.getLogger("dlgpr.models")


@dataclass
class ClipBackboneConfig:
    """Which CLIP to build and from which weights."""

    model_name: str = "dlgpr-tiny"
    """open_clip architecture name (``ViT-B-16``, ...) or one of dlgpr's ``model_configs``."""
    pretrained: str | None = None
    """open_clip pretrained tag (``openai``), a dlgpr tag of a dlgpr architecture (``synthcities``),
    a local checkpoint file, or None for random weights."""
    image_size: int | None = None
    """Input resolution override; None keeps the architecture's own."""
    context_length: int | None = None
    """Text context override: a randomly initialised tower is built with it; pretrained weights
    keep their first ``context_length`` positions (a shorter context, e.g. CLIP's 77 on a tower
    pretrained with 248). None keeps the architecture's own."""
    cache_dir: str | None = None
    """Where open_clip keeps downloaded weights (None: its default)."""
    long_text_length: int | None = None
    """Extend the text context to this many positions by interpolating the positional
    embedding (Long-CLIP: 248); None keeps the architecture's context."""
    long_text_keep_first: int = 20
    """Leading positions copied unchanged when stretching (Long-CLIP: 20; 0 stretches all)."""
    pad_to_longest: bool = True
    """Tokenize a batch to its longest text instead of the full context (a 40-token dialogue
    query then costs 40 positions, not 248). Exact: padding never reaches a real token (causal
    mask, or a padding mask on a bidirectional tower)."""

    def __post_init__(self) -> None:
        if isinstance(self.pretrained, str) and self.pretrained.strip().lower() in ("", "none", "null"):
            self.pretrained = None  # a command-line `null` can reach a nested dataclass as text
        if self.model_name not in open_clip.list_models():
            raise ValueError(f"model_name {self.model_name!r} is not an open_clip architecture (see open_clip.list_models())")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.context_length is not None and self.context_length < 2:
            raise ValueError(f"context_length must be >= 2, got {self.context_length}")
        archs = sorted(name for name, tag in DLGPR_PRETRAINED if tag == self.pretrained)
        if archs and self.model_name not in archs and not Path(str(self.pretrained)).is_file():
            raise ValueError(f"pretrained {self.pretrained!r} exists for {', '.join(archs)}, not for model_name {self.model_name!r}")
        if self.pretrained and self.context_length is not None and self.long_text_length is not None:
            raise ValueError(
                "on pretrained weights context_length (keep the first positions) and long_text_length "
                "(stretch the positions) exclude each other: set one"
            )
        if self.long_text_length is not None and self.long_text_length < 2:
            raise ValueError(f"long_text_length must be >= 2, got {self.long_text_length}")
        if self.long_text_keep_first < 0:
            raise ValueError(f"long_text_keep_first must be >= 0, got {self.long_text_keep_first}")


def stretch_positions(pos: Tensor, length: int, keep_first: int = 20) -> Tensor:
    """Long-CLIP-style positional stretching: ``[L, W] -> [length, W]``.

    Rows ``[:keep_first]`` are copied; the remaining ``L - keep_first`` rows are resampled
    linearly onto ``length - keep_first`` positions at a constant stride (77 -> 248 with
    keep_first 20: stride 1/4, each old position followed by three interpolated ones); the last
    few new positions lie past the final old one and continue its last difference.
    """
    old_len = pos.shape[0]
    if length < old_len:
        raise ValueError(f"cannot stretch {old_len} positions down to {length}")
    if length == old_len:
        return pos.clone()
    keep = min(keep_first, old_len - 1)
    head, rest = pos[:keep], pos[keep:]  # [keep, W], [n_old, W]
    n_old, n_new = rest.shape[0], length - keep
    if n_old == 1:
        return torch.cat([head, rest.expand(n_new, -1)])
    x = torch.arange(n_new, dtype=torch.float64) * (n_old / n_new)  # [n_new] source coordinates
    i0 = x.floor().long().clamp(max=n_old - 2)  # [n_new]
    frac = (x - i0).to(pos.dtype)[:, None]  # [n_new, 1]; > 1 past the end: linear extrapolation
    stretched = rest[i0] + frac * (rest[i0 + 1] - rest[i0])  # [n_new, W]
    return torch.cat([head, stretched])


class ImageTaps(NamedTuple):
    """Output of :meth:`CLIPBackbone.image_taps`."""

    pooled: Tensor
    """``[B, D]`` the tower's global embedding (unnormalised), as ``encode_image``."""
    tokens: list[Tensor]
    """Per tap ``[B, 1 + N, W]``: the residual stream after that block ([CLS] first)."""
    cls_attention: list[Tensor]
    """Per tap ``[B, N]``: the block's attention of [CLS] onto each patch, mean over heads."""


class TextTaps(NamedTuple):
    """Output of :meth:`CLIPBackbone.text_taps`."""

    pooled: Tensor
    """``[B, D]`` the tower's global (EOT) embedding, as ``encode_text``."""
    tokens: list[Tensor]
    """Per tap ``[B, L, W]``: the residual stream after that block."""
    padding: Tensor
    """``[B, L]`` True at positions after the end-of-text token (not part of the text)."""


class ClipTokenizer:
    """Picklable callable ``list[str] -> LongTensor [B, context_length]`` (for DataLoader workers).

    Texts longer than the context are truncated (the end-of-text token kept last) and counted:
    ``truncated`` of ``seen`` so far, with a warning at the 1st, 2nd, 4th, 8th, ... truncation
    so a long run reports how often it happens without flooding the log. An empty text is an
    error: it has nothing to retrieve by.
    """

    def __init__(self, model_name: str, context_length: int, pad_to_longest: bool = False) -> None:
        self.model_name = model_name
        self.context_length = context_length
        self.pad_to_longest = pad_to_longest
        self._tok = open_clip.get_tokenizer(model_name, context_length=context_length)
        self.seen = 0
        self.truncated = 0

    def __call__(self, texts: list[str]) -> Tensor:
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"text {i} of the batch is empty: a description must be a non-empty string")
        self.seen += len(texts)
        tok = self._tok
        if not isinstance(tok, SimpleTokenizer) or tok.reduction_fn is not None:
            return tok(texts, context_length=self.context_length)  # [B, L]; counts unknown
        rows = []
        for text in texts:
            ids = [tok.sot_token_id, *tok.encode(text), tok.eot_token_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length - 1] + [tok.eot_token_id]
                self._count_truncation()
            rows.append(ids)
        length = max(len(r) for r in rows) if self.pad_to_longest and rows else self.context_length
        out = torch.zeros(len(texts), length, dtype=torch.long)  # [B, L]
        for i, ids in enumerate(rows):
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def _count_truncation(self) -> None:
        self.truncated += 1
        if self.truncated & (self.truncated - 1) == 0:  # powers of two
            log.warning(
                "%d of %d texts so far were longer than the %d-token context and were truncated",
                self.truncated, self.seen, self.context_length,
            )


class CLIPBackbone(nn.Module):
    """Image and text towers of a CLIP model.

    ``encode_image``: ``[B, 3, H, W]`` normalised pixels -> ``[B, D]``; ``encode_text``:
    ``[B, L]`` token ids -> ``[B, D]``. Embeddings are returned unnormalised.
    """

    def __init__(self, config: ClipBackboneConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ClipBackboneConfig()
        model = open_clip.create_model(
            config.model_name,
            pretrained=resolve_pretrained(config.model_name, config.pretrained),
            force_image_size=config.image_size,
            force_context_length=None if config.pretrained else config.context_length,
            cache_dir=config.cache_dir,
        )
        if not isinstance(model, open_clip.CLIP):
            raise ValueError(f"{config.model_name} is not a two-tower CLIP model (got {type(model).__name__})")
        # The contrastive temperature belongs to the loss (SDM fixes it); keep open_clip's
        # learnable logit_scale out of the optimizer so it does not drift unused.
        model.logit_scale.requires_grad_(False)
        self.model = model
        if config.long_text_length is not None and config.long_text_length != int(model.context_length):
            self._extend_text_context(config.long_text_length, config.long_text_keep_first)
        if config.pretrained and config.context_length is not None and config.context_length != int(model.context_length):
            self._truncate_text_context(config.context_length)
        self.context_length = int(model.context_length)
        vision_size = model.visual.image_size
        self.image_size = int(vision_size[0] if isinstance(vision_size, (tuple, list)) else vision_size)
        self.image_mean = tuple(float(v) for v in getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
        self.image_std = tuple(float(v) for v in getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
        self.embed_dim = int(model.text_projection.shape[1]) if model.text_projection is not None else int(model.transformer.width)

    def _extend_text_context(self, length: int, keep_first: int) -> None:
        m = self.model
        with torch.no_grad():
            pos = stretch_positions(m.positional_embedding.detach(), length, keep_first)  # [length, W]
        m.positional_embedding = nn.Parameter(pos)
        m.context_length = length
        if m.attn_mask is not None:  # a causal tower's mask grows with it; a bidirectional one has none
            mask = torch.full((length, length), float("-inf")).triu_(1)  # causal, as open_clip builds it
            m.register_buffer("attn_mask", mask.to(m.attn_mask.device), persistent=False)

    def _truncate_text_context(self, length: int) -> None:
        m = self.model
        if length > int(m.context_length):
            raise ValueError(
                f"context_length {length} exceeds the {int(m.context_length)} positions of the pretrained "
                f"{self.config.model_name} weights; stretch them with long_text_length instead"
            )
        m.positional_embedding = nn.Parameter(m.positional_embedding.detach()[:length].clone())
        m.context_length = length
        if m.attn_mask is not None:
            m.register_buffer("attn_mask", m.attn_mask[:length, :length].clone(), persistent=False)

    @property
    def image_layers(self) -> int:
        return len(self.model.visual.transformer.resblocks)

    @property
    def text_layers(self) -> int:
        return len(self.model.transformer.resblocks)

    @property
    def image_width(self) -> int:
        return int(self.model.visual.transformer.width)

    @property
    def text_width(self) -> int:
        return int(self.model.transformer.width)

    def resolve_logit_scale(self, scale: float | None) -> float:
        """``scale``, or for None the contrastive scale stored with the weights (open_clip's
        ``logit_scale``, kept as a log; OpenAI's CLIP: 100, dlgpr's ``synthcities``: its learnt one)."""
        if scale is not None:
            return float(scale)
        if not self.config.pretrained:
            raise ValueError("logit_scale: null takes the scale of pretrained weights, but backbone.pretrained is null")
        return float(self.model.logit_scale.detach().exp().item())

    def tokenizer(self) -> ClipTokenizer:
        return ClipTokenizer(self.config.model_name, self.context_length, self.config.pad_to_longest)

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images)  # [B, D]

    def encode_text(self, tokens: Tensor) -> Tensor:
        """``[B, L]`` token ids, ``L <= context_length`` (a batch padded to its longest text) -> ``[B, D]``."""
        return self.text_taps(tokens, []).pooled  # [B, D]

    def forward(self, images: Tensor | None = None, tokens: Tensor | None = None) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if images is not None:
            out["image_emb"] = self.encode_image(images)  # [B, D]
        if tokens is not None:
            out["text_emb"] = self.encode_text(tokens)  # [B, D]
        return out

    # ---- layer taps ------------------------------------------------------------------------------
    def image_taps(self, images: Tensor, taps: list[int]) -> ImageTaps:
        """Run the vision tower once through open_clip's ``forward_intermediates``; ``taps`` are
        1-based block indices.

        images: ``[B, 3, H, W]``. The token states after each tapped block are open_clip's own
        intermediates ([CLS] put back in front of the patches). The [CLS] attention of a tapped
        block is recomputed from that block's input (caught by a forward pre-hook, so the tower
        still runs once) with the block's own query/key projections (open_clip does not return
        attention weights); it is used for token selection only and carries no gradient.
        """
        visual = self.model.visual
        if not isinstance(visual, VisionTransformer) or not visual.transformer.batch_first:
            raise ValueError("layer taps need an open_clip VisionTransformer tower (batch_first)")
        blocks = visual.transformer.resblocks
        if any(not 1 <= t <= len(blocks) for t in taps):
            raise ValueError(f"image taps must be in [1, {len(blocks)}], got {taps}")
        order = sorted(set(taps))
        attention: dict[int, Tensor] = {}

        def catch(depth: int):
            def hook(block: nn.Module, args: tuple) -> None:
                attention[depth] = _cls_attention(block, args[0])  # [B, N] from the block's input
            return hook

        handles = [blocks[d - 1].register_forward_pre_hook(catch(d)) for d in order]
        try:
            out = visual.forward_intermediates(images, indices=[d - 1 for d in order], output_fmt="NLC", output_extra_tokens=True)
        finally:
            for h in handles:
                h.remove()
        after = {d: torch.cat([cls, patches], dim=1)  # [B, 1 + N, W]
                 for d, cls, patches in zip(order, out["image_intermediates_prefix"], out["image_intermediates"])}
        return ImageTaps(out["image_features"], [after[t] for t in taps], [attention[t] for t in taps])

    def text_taps(self, text: Tensor, taps: list[int]) -> TextTaps:
        """Run the text tower block by block; ``text``: ``[B, L]`` token ids with ``L <=
        context_length`` (shorter batches use the first ``L`` positions); ``taps`` 1-based."""
        m = self.model
        if not m.transformer.batch_first:
            raise ValueError("layer taps need a batch_first open_clip text transformer")
        length = text.shape[1]
        if length > self.context_length:
            raise ValueError(f"token batch of length {length} exceeds the text context ({self.context_length})")
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(text).to(cast) + m.positional_embedding[:length].to(cast)  # [B, L, W]
        if m.text_pool_type == "eos" and getattr(m, "text_eos_id", None) is not None:
            end = (text == m.text_eos_id).int().argmax(dim=-1)  # [B]
        else:
            end = text.argmax(dim=-1)  # [B] CLIP's EOT id is the largest in the vocabulary
        padding = torch.arange(length, device=text.device)[None, :] > end[:, None]  # [B, L]
        mask = self._text_attention_mask(padding, x.dtype)
        wanted = set(taps)
        tokens = []
        for depth, block in enumerate(m.transformer.resblocks, start=1):
            x = block(x, attn_mask=mask)
            if depth in wanted:
                tokens.append(x)
        x = m.ln_final(x)  # [B, L, W]
        pooled = text_global_pool(x, text, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))  # [B, W]
        if m.text_projection is not None:
            pooled = m.text_projection(pooled) if isinstance(m.text_projection, nn.Linear) else pooled @ m.text_projection  # [B, D]
        return TextTaps(pooled, tokens, padding)

    def _text_attention_mask(self, padding: Tensor, dtype: torch.dtype) -> Tensor:
        """Additive attention mask of the text blocks for a batch with ``padding`` ``[B, L]``.

        A causal tower (CLIP) takes the top-left ``[L, L]`` of its causal mask: padding sits after
        the end-of-text token, so no real token ever sees it. A bidirectional tower
        (``no_causal_mask``) gets a per-sample key mask ``[B * heads, L, L]`` that hides padding.
        """
        m = self.model
        length = padding.shape[1]
        if m.attn_mask is not None:
            return m.attn_mask[:length, :length].to(dtype)  # [L, L]
        heads = m.transformer.resblocks[0].attn.num_heads
        keys = torch.zeros(padding.shape, dtype=dtype, device=padding.device).masked_fill(padding, float("-inf"))  # [B, L]
        return keys[:, None, :].expand(-1, length, -1).repeat_interleave(heads, dim=0)  # [B * H, L, L]


@torch.no_grad()
def _cls_attention(block: nn.Module, x: Tensor) -> Tensor:
    """Attention of the [CLS] query onto the patch keys in ``block``, averaged over heads.

    x: ``[B, 1 + N, W]`` the block's input. Returns ``[B, N]`` (rows sum to at most 1: the
    [CLS]-to-[CLS] share is dropped).
    """
    attn: nn.MultiheadAttention = block.attn
    h = block.ln_1(x)  # [B, T, W]
    w, b = attn.in_proj_weight, attn.in_proj_bias
    width, heads = h.shape[-1], attn.num_heads
    q = h[:, 0] @ w[:width].T  # [B, W]
    k = h @ w[width : 2 * width].T  # [B, T, W]
    if b is not None:
        q, k = q + b[:width], k + b[width : 2 * width]
    hd = width // heads
    q = q.view(q.shape[0], heads, hd)  # [B, H, hd]
    k = k.view(k.shape[0], k.shape[1], heads, hd)  # [B, T, H, hd]
    scores = torch.einsum("bhd,bthd->bht", q, k) / math.sqrt(hd)  # [B, H, T]
    return scores.softmax(dim=-1).mean(dim=1)[:, 1:]  # [B, N]

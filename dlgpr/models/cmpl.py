"""CMPL: cross-modal multi-level progressive alignment (DlgPR paper, section 4.2).

A CLIP backbone is tapped after blocks ``taps`` of both towers. At each tapped layer l:

* vision: the saliency filtering module (SFM) keeps the patch tokens that the block's [CLS]
  query attends to most (``keep_ratio`` of them), V_s^(l);
* both towers' tokens are normalised and projected to a common width by a per-layer,
  per-modality adapter, and ONE shared fine-grained extractor E_f (cross-attention of learnable
  instance-concept queries onto tokens, then an MLP) reads them:
  F_v^(l) = E_f(Q^(l), V_s^(l)),  F_t^(l) = E_f(Q^(l), T^(l))  with the same Q^(l) [num_queries, d]
  for both modalities (text padding after the end-of-text token is masked).

The global embeddings are the towers' own ([CLS] / EOT). The retrieval score of text i and
image j is ``(w_g s_g + w_l mean_l s^(l)) / (w_g + w_l)``, where s_g is the global cosine and
s^(l) the local score (mean over queries of the cosine of matched outputs). That score is an
inner product of two unit vectors -- the global embedding and every query output, each
normalised and scaled by the square root of its weight, concatenated -- so gallery and queries
are encoded separately (:meth:`CMPL.encode_gallery` once, :meth:`CMPL.encode_queries` per
round) and any inner-product search (torch, faiss, the dialogue loop) ranks by the full score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlgpr.models.clip_backbone import CLIPBackbone, ClipBackboneConfig

__all__ = ["CMPLConfig", "CMPL", "CMPLFeatures", "FineGrainedExtractor", "select_salient_tokens"]


@dataclass
class CMPLConfig:
    """The multi-level heads on top of the backbone, and the retrieval score."""

    taps: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    """1-based blocks tapped in both towers (ViT-B/16: 3, 6, 9, 12). Empty: global only."""
    num_queries: int = 16
    """Instance-concept queries per tapped layer."""
    local_dim: int = 128
    """Width of the extractor (ViT-B/16 config: 256)."""
    extractor_heads: int = 4
    """Attention heads of the shared extractor."""
    keep_ratio: float = 0.5
    """Share of patch tokens the SFM keeps at each tapped layer (1.0: no selection)."""
    global_weight: float = 1.0
    """w_g of the retrieval score."""
    local_weight: float = 1.0
    """w_l of the retrieval score (weight of the mean local score; 0: rank by global only)."""

    def __post_init__(self) -> None:
        self.taps = sorted(set(int(t) for t in self.taps))
        if any(t < 1 for t in self.taps):
            raise ValueError(f"cmpl.taps are 1-based block indices, got {self.taps}")
        if self.num_queries < 1 or self.local_dim < 1 or self.extractor_heads < 1:
            raise ValueError("cmpl.num_queries, cmpl.local_dim and cmpl.extractor_heads must be >= 1")
        if self.local_dim % self.extractor_heads:
            raise ValueError(f"cmpl.local_dim ({self.local_dim}) must be divisible by cmpl.extractor_heads ({self.extractor_heads})")
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"cmpl.keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.global_weight < 0 or self.local_weight < 0 or self.global_weight + self.local_weight == 0:
            raise ValueError(f"cmpl.global_weight/local_weight must be >= 0 and not both 0, got {self.global_weight}, {self.local_weight}")


class CMPLFeatures(NamedTuple):
    """One modality's CMPL features (unnormalised)."""

    global_: Tensor
    """``[B, D]`` the tower's global embedding."""
    local: list[Tensor]
    """Per tapped layer ``[B, Q, d]`` extractor outputs (empty without taps)."""


def select_salient_tokens(tokens: Tensor, cls_attention: Tensor, keep_ratio: float) -> Tensor:
    """SFM: the ``ceil(keep_ratio * N)`` patch tokens with the highest [CLS] attention.

    tokens: ``[B, 1 + N, W]`` ([CLS] first, not selectable); cls_attention: ``[B, N]``.
    Returns ``[B, K, W]`` in their original (raster) order. Selection is by index; gradients
    flow through the kept tokens.
    """
    patches = tokens[:, 1:]  # [B, N, W]
    n = patches.shape[1]
    k = max(1, math.ceil(keep_ratio * n))
    if k >= n:
        return patches
    idx = cls_attention.topk(k, dim=1).indices.sort(dim=1).values  # [B, K]
    return patches.gather(1, idx[:, :, None].expand(-1, -1, patches.shape[2]))  # [B, K, W]


class FineGrainedExtractor(nn.Module):
    """E_f: queries cross-attend to tokens, then an MLP (pre-norm residual blocks).

    queries ``[B, Q, d]``, tokens ``[B, N, d]``, padding ``[B, N]`` (True = ignore) -> ``[B, Q, d]``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.ln_q = nn.LayerNorm(dim)
        self.ln_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.ln_out = nn.LayerNorm(dim)

    def forward(self, queries: Tensor, tokens: Tensor, padding: Tensor | None = None) -> Tensor:
        kv = self.ln_kv(tokens)  # [B, N, d]
        x = queries + self.attn(self.ln_q(queries), kv, kv, key_padding_mask=padding, need_weights=False)[0]  # [B, Q, d]
        x = x + self.mlp(self.ln_mlp(x))  # [B, Q, d]
        return self.ln_out(x)  # [B, Q, d]


class CMPL(nn.Module):
    """CLIP backbone + CMPL heads. ``forward`` returns features, never a loss."""

    def __init__(self, backbone: ClipBackboneConfig | None = None, config: CMPLConfig | None = None) -> None:
        super().__init__()
        self.backbone = CLIPBackbone(backbone)
        self.config = cfg = config or CMPLConfig()
        deepest = min(self.backbone.image_layers, self.backbone.text_layers)
        if cfg.taps and cfg.taps[-1] > deepest:
            raise ValueError(f"cmpl.taps {cfg.taps} exceed the towers' depth ({self.backbone.image_layers} image, {self.backbone.text_layers} text blocks)")
        n, d = len(cfg.taps), cfg.local_dim
        if n:
            self.queries = nn.Parameter(torch.randn(n, cfg.num_queries, d) * 0.02)  # Q^(l), one set per tapped layer
        else:
            self.register_parameter("queries", None)
        self.image_adapters = nn.ModuleList(nn.Sequential(nn.LayerNorm(self.backbone.image_width), nn.Linear(self.backbone.image_width, d)) for _ in range(n))
        self.text_adapters = nn.ModuleList(nn.Sequential(nn.LayerNorm(self.backbone.text_width), nn.Linear(self.backbone.text_width, d)) for _ in range(n))
        self.extractor = FineGrainedExtractor(d, cfg.extractor_heads) if n else None
        self.embed_dim = self.backbone.embed_dim
        self.retrieval_dim = self.embed_dim + (n * cfg.num_queries * d if cfg.local_weight > 0 else 0)

    @property
    def has_local(self) -> bool:
        return bool(self.config.taps)

    # ---- features --------------------------------------------------------------------------------
    def image_features(self, images: Tensor) -> CMPLFeatures:
        """images ``[B, 3, H, W]`` -> global ``[B, D]`` and per-layer local ``[B, Q, d]``."""
        if not self.has_local:
            return CMPLFeatures(self.backbone.encode_image(images), [])
        taps = self.backbone.image_taps(images, self.config.taps)
        local = []
        for l, (tokens, attn) in enumerate(zip(taps.tokens, taps.cls_attention)):
            kept = select_salient_tokens(tokens, attn, self.config.keep_ratio)  # [B, K, W]
            local.append(self._extract(l, self.image_adapters[l](kept), None))
        return CMPLFeatures(taps.pooled, local)

    def text_features(self, tokens: Tensor) -> CMPLFeatures:
        """token ids ``[B, L]`` -> global ``[B, D]`` and per-layer local ``[B, Q, d]``."""
        if not self.has_local:
            return CMPLFeatures(self.backbone.encode_text(tokens), [])
        taps = self.backbone.text_taps(tokens, self.config.taps)
        local = [self._extract(l, self.text_adapters[l](x), taps.padding) for l, x in enumerate(taps.tokens)]
        return CMPLFeatures(taps.pooled, local)

    def _extract(self, layer: int, tokens: Tensor, padding: Tensor | None) -> Tensor:
        assert self.extractor is not None
        queries = self.queries[layer].unsqueeze(0).expand(tokens.shape[0], -1, -1).to(tokens.dtype)  # [B, Q, d]
        return self.extractor(queries, tokens, padding)  # [B, Q, d]

    def forward(self, images: Tensor | None = None, tokens: Tensor | None = None) -> dict[str, CMPLFeatures]:
        out: dict[str, CMPLFeatures] = {}
        if images is not None:
            out["image"] = self.image_features(images)
        if tokens is not None:
            out["text"] = self.text_features(tokens)
        return out

    # ---- retrieval -------------------------------------------------------------------------------
    def retrieval_embedding(self, features: CMPLFeatures) -> Tensor:
        """Unit vectors whose inner product is the CMPL retrieval score.  -> ``[B, retrieval_dim]``

        [sqrt(w_g / W) g/|g|, sqrt(w_l / (W n Q)) f_lq/|f_lq| for each layer l and query q],
        W = w_g + w_l, so <image, text> = (w_g s_g + w_l mean_l s^(l)) / W.
        """
        cfg = self.config
        g = F.normalize(features.global_.float(), dim=-1)  # [B, D]
        if cfg.local_weight == 0 or not features.local:
            return g
        total = cfg.global_weight + cfg.local_weight
        n, q = len(features.local), cfg.num_queries
        parts = [g * math.sqrt(cfg.global_weight / total)]
        local_scale = math.sqrt(cfg.local_weight / (total * n * q))
        parts += [F.normalize(f.float(), dim=-1).flatten(1) * local_scale for f in features.local]  # [B, Q * d] each
        return torch.cat(parts, dim=1)  # [B, retrieval_dim]

    def encode_gallery(self, images: Tensor) -> Tensor:
        """Gallery images ``[B, 3, H, W]`` -> unit retrieval embeddings ``[B, retrieval_dim]``."""
        return self.retrieval_embedding(self.image_features(images))

    def encode_queries(self, tokens: Tensor) -> Tensor:
        """Query token ids ``[B, L]`` -> unit retrieval embeddings ``[B, retrieval_dim]``."""
        return self.retrieval_embedding(self.text_features(tokens))

"""The embedded image-conditioned policy of GLOBE's recipe: a small vision-language model for 2 CPU cores.

The retriever's CLIP image tower (frozen; by default dlgpr's ``dlgpr-mini`` pretrained on a
SynthCities world) embeds the image; a projector turns that embedding into ``image_tokens``
prefix embeddings; a small Qwen2-architecture decoder trained from scratch around the corpus
tokenizer reads the prefix, then the prompt, then writes the reply. It is the CPU stand-in for
Qwen2.5-VL in the same places: :func:`dlgpr.models.questioner.load_policy` builds or loads it,
:func:`dlgpr.models.prompting.generate` samples from it, and ``SFTModule`` / ``GRPOModule`` train it.

What the training modules need from a policy, and this class gives:

* ``forward(input_ids, attention_mask, pixel_values, use_cache=False, logits_to_keep=0)`` ->
  an output with ``.logits`` ``[B, L, V]`` over the text positions only (the image prefix gives
  no logits), so logits line up with ``input_ids`` as for a text-only causal LM;
* ``generate(input_ids, attention_mask, pixel_values, max_new_tokens, ...)`` -> ``[B * G, L + T]``
  with the prompt first (as Hugging Face ``generate`` returns for a decoder-only model);
* ``pixel_values(images)`` -> ``[B, 3, S, S]`` (the tower's preprocessing), and
  ``takes_pixel_values = True`` so the modules know to call it.

Positions count only the real tokens (``cumsum(mask) - 1``), in the forward pass and in
generation alike, so a left-padded prompt gets the same positions as an unpadded one and the
log-probabilities of GRPO's loss are those the completion was sampled with.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from dlgpr.data.streaming import ImageTransform, Preprocessing
from dlgpr.models.clip_backbone import CLIPBackbone, ClipBackboneConfig
from dlgpr.models.questioner import ImagePolicyConfig, ScratchLMConfig

__all__ = ["ImagePolicy", "WEIGHTS_FILE", "CONFIG_FILE"]

WEIGHTS_FILE = "image_policy.pt"
CONFIG_FILE = "image_policy.json"


class ImagePolicy(nn.Module):
    """Frozen image tower -> projector -> prefix of a small causal decoder (module docstring)."""

    takes_pixel_values = True

    def __init__(self, config: ImagePolicyConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.config = config
        self.tower = CLIPBackbone(ClipBackboneConfig(model_name=config.tower_model, pretrained=config.tower_pretrained))
        # the tower is the retriever's and stays as pretrained: only the projector and decoder learn
        self.tower.requires_grad_(False).eval()
        self.transform = ImageTransform(Preprocessing(image_size=self.tower.image_size, mean=self.tower.image_mean,
                                                      std=self.tower.image_std))
        d = config.decoder
        lm_config = Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=d.hidden_size, intermediate_size=d.intermediate_size,
            num_hidden_layers=d.num_layers, num_attention_heads=d.num_heads, num_key_value_heads=d.num_kv_heads,
            max_position_embeddings=d.max_position_embeddings, initializer_range=d.init_std, tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        )
        self.lm = Qwen2ForCausalLM(lm_config)
        self.lm.generation_config.eos_token_id = tokenizer.eos_token_id
        self.lm.generation_config.pad_token_id = tokenizer.pad_token_id
        e = self.tower.embed_dim
        self.projector = nn.Sequential(nn.LayerNorm(e), nn.Linear(e, config.image_tokens * d.hidden_size))
        nn.init.normal_(self.projector[1].weight, std=d.init_std)
        nn.init.zeros_(self.projector[1].bias)

    # ---- what the modules call ------------------------------------------------------------------
    @property
    def generation_config(self) -> Any:
        return self.lm.generation_config

    def get_input_embeddings(self) -> nn.Embedding:
        return self.lm.get_input_embeddings()

    def requires_grad_(self, requires_grad: bool = True) -> "ImagePolicy":
        super().requires_grad_(requires_grad)
        self.tower.requires_grad_(False)  # frozen whatever a trainer asks of the whole model
        return self

    def train(self, mode: bool = True) -> "ImagePolicy":
        super().train(mode)
        self.tower.eval()  # frozen: never in train mode (no dropout, fixed statistics)
        return self

    def pixel_values(self, images: Sequence[Image.Image]) -> Tensor:
        """``[B, 3, S, S]``: the images as the tower reads them."""
        return torch.stack([self.transform(im.convert("RGB")) for im in images])

    def image_prefix(self, pixel_values: Tensor) -> Tensor:
        """``[B, K, H]``: the projected image embedding (the tower without gradients)."""
        with torch.no_grad():
            v = self.tower.encode_image(pixel_values.to(self.projector[1].weight.device)).float()  # [B, E]
        v = torch.nn.functional.normalize(v, dim=-1)
        k, h = self.config.image_tokens, self.config.decoder.hidden_size
        return self.projector(v).view(v.shape[0], k, h).to(self.lm.dtype)  # [B, K, H]

    def _prefixed(self, input_ids: Tensor, attention_mask: Tensor | None, pixel_values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(embeds [B, K+L, H], mask [B, K+L], positions [B, K+L])`` with the image first.

        The image goes in front of the (left-padded) prompt; masked padding between the two is
        skipped by the positions, which count real tokens only.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prefix = self.image_prefix(pixel_values)  # [B, K, H]
        embeds = torch.cat([prefix, self.get_input_embeddings()(input_ids)], dim=1)  # [B, K+L, H]
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device), attention_mask], dim=1)
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)  # [B, K+L]
        return embeds, mask, positions

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, pixel_values: Tensor | None = None,
                use_cache: bool = False, logits_to_keep: int = 0, **unused: Any) -> CausalLMOutputWithPast:
        """Logits ``[B, L, V]`` of the text positions (the last ``logits_to_keep`` when > 0)."""
        if pixel_values is None:
            raise ValueError("ImagePolicy needs pixel_values (one image per prompt)")
        embeds, mask, positions = self._prefixed(input_ids, attention_mask, pixel_values)
        length = input_ids.shape[1]
        keep = logits_to_keep if 0 < logits_to_keep <= length else length
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=keep)
        return CausalLMOutputWithPast(logits=out.logits)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, pixel_values: Tensor | None = None,
                 max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 num_return_sequences: int = 1, eos_token_id: int | None = None, pad_token_id: int | None = None,
                 **unused: Any) -> Tensor:
        """``[B * G, L + T]``: the prompts then up to ``max_new_tokens`` sampled (or greedy) tokens,
        rows ``p * G + g``, padded with ``pad_token_id`` after a row's end-of-turn token (KV cache on)."""
        if pixel_values is None:
            raise ValueError("ImagePolicy needs pixel_values (one image per prompt)")
        g = num_return_sequences
        eos = self.generation_config.eos_token_id if eos_token_id is None else eos_token_id
        pad = self.generation_config.pad_token_id if pad_token_id is None else pad_token_id
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ids = input_ids.repeat_interleave(g, dim=0)  # [N, L]
        embeds, mask, positions = self._prefixed(ids, attention_mask.repeat_interleave(g, dim=0), pixel_values.repeat_interleave(g, dim=0))
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        past, logits = out.cache, out.logits[:, -1].float()  # [N, V]
        pos = positions[:, -1:]  # [N, 1]
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        new: list[Tensor] = []
        for step in range(max_new_tokens):
            token = _pick(logits, do_sample, temperature, top_p)  # [N]
            token = torch.where(done, torch.full_like(token, pad), token)
            new.append(token)
            done = done | (token == eos)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos + 1
            out = self.lm(input_ids=token[:, None], attention_mask=mask, position_ids=pos, cache=past, use_cache=True)
            past, logits = out.cache, out.logits[:, -1].float()
        return torch.cat([ids, torch.stack(new, dim=1)], dim=1) if new else ids

    # ---- weights ---------------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> None:
        """The config and the trained weights (a pretrained tower is rebuilt from its tag on load; a
        random one, as in tests, is saved with the rest)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=1))
        from_tag = self.config.tower_pretrained is not None
        state = {k: v for k, v in self.state_dict().items() if not (from_tag and k.startswith("tower."))}
        torch.save(state, out / WEIGHTS_FILE)

    @classmethod
    def load(cls, path: str | Path, tokenizer: PreTrainedTokenizerBase) -> "ImagePolicy":
        raw = json.loads((Path(path) / CONFIG_FILE).read_text())
        raw["decoder"] = ScratchLMConfig(**raw["decoder"])
        model = cls(ImagePolicyConfig(**raw), tokenizer)
        state = torch.load(Path(path) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("tower.")]:
            raise ValueError(f"{path}: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
        return model


def _pick(logits: Tensor, do_sample: bool, temperature: float, top_p: float) -> Tensor:
    """``[N]`` next tokens from ``[N, V]`` logits: argmax, or a sample at ``temperature`` within the top-p nucleus."""
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # [N, V]
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # drop a token when the tokens before it already hold top_p of the mass (the first always stays)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1).squeeze(1)

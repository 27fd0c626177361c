"""Text-to-image place retrieval with a trained retriever: the retriever interface of the dialogue
loop, the gallery encoder, and loading a retriever from its checkpoint (ranks: ``dlgpr.ranking``)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from dlgpr.data.jpeg import shard_image_loader
from dlgpr.data.reader import iter_records
from dlgpr.data.schema import PlaceRecord
from dlgpr.data.shards import read_manifest
from dlgpr.data.streaming import ImageTransform, RecordCollator, RecordStream
from dlgpr.ranking import Gallery
from dlgpr.utils import eval_mode

__all__ = ["TextRetriever", "ModuleTextRetriever", "encode_gallery", "load_retriever"]


# ---- retrievers as the dialogue loop sees them ----------------------------------------------------


@runtime_checkable
class TextRetriever(Protocol):
    """What the dialogue loop needs from a retriever: normalised text embeddings, batched."""

    def embed_texts(self, texts: list[str]) -> Tensor:
        """``len(texts)`` strings -> ``[N, D]`` L2-normalised embeddings."""
        ...


class ModuleTextRetriever:
    """Adapts a trained LightningModule (``preprocessing().tokenizer`` + ``encode_texts``).

    Texts are tokenized and encoded in chunks of ``batch_size`` under ``inference_mode``, on the
    module's device; long queries are truncated by the module's tokenizer.
    """

    def __init__(self, module: Any, batch_size: int = 256) -> None:
        self.module = module
        self.tokenizer = module.preprocessing().tokenizer
        self.batch_size = batch_size

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> Tensor:
        device = next(self.module.parameters()).device
        with eval_mode(self.module):
            out = [self.module.encode_texts(self.tokenizer(texts[i : i + self.batch_size]).to(device)).float() for i in range(0, len(texts), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, getattr(self.module, "embed_dim", 0))  # [N, D]


@torch.inference_mode()
def encode_gallery(
    module: Any, data_dir: str | Path, split: str | Sequence[str], batch_size: int = 256, with_images: bool = False, num_workers: int = 0
) -> Gallery:
    """Every image of ``split`` (one split or several) in ``data_dir``, embedded with ``module.encode_images``.

    Reads the shards on this process alone (whatever the DDP rank: a reward that re-ranks needs
    the whole gallery on every rank), ``batch_size`` images per encoder call; in manifest order
    with ``num_workers=0``, else in the order the loader's workers deliver their batches. Bad
    samples are skipped and reported. ``with_images`` keeps the JPEG bytes for vision-language
    questioners.
    """
    data_dir = Path(data_dir)
    splits = [split] if isinstance(split, str) else list(split)
    shards = [s for name in splits for s in read_manifest(data_dir).split_shards(name)]
    if not shards:
        raise ValueError(f"{data_dir}: the manifest lists no shard of split {split!r}")
    stream = RecordStream(data_dir, shards, ImageTransform(module.preprocessing()), name=f"{data_dir} {split} gallery")
    loader = DataLoader(stream, batch_size=batch_size, num_workers=num_workers, collate_fn=RecordCollator(None))
    by_key = {r.key: r for s in shards for r in iter_records(data_dir / s.path)}
    device = next(module.parameters()).device
    embs: list[Tensor] = []
    records: list[PlaceRecord] = []
    with eval_mode(module):
        for batch in loader:
            embs.append(module.encode_images(batch["image"].to(device)).float().cpu())
            records += [by_key[k] for k in batch["key"]]
    if not records:
        raise ValueError(f"{data_dir}: split {split!r} has no readable image")
    image_fn = shard_image_loader(data_dir, [s.path for s in shards], [r.key for r in records]) if with_images else None
    return Gallery.from_records(records, torch.cat(embs), image_fn=image_fn)


CLASS_PATH_KEY = "dlgpr_class_path"


def load_retriever(ckpt: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a retriever LightningModule saved by ``python -m dlgpr fit`` for inference.

    The module class is read from the checkpoint (modules record their import path under
    ``dlgpr_class_path``), so any retriever of the project loads through this one function.
    Returns the module in eval mode; wrap it in :class:`ModuleTextRetriever` for the dialogue loop.
    """
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt}")
    meta = torch.load(ckpt, map_location="cpu", weights_only=False)
    class_path = meta.get(CLASS_PATH_KEY)
    if not class_path:
        raise ValueError(f"{ckpt}: no {CLASS_PATH_KEY} entry; it was not saved by a dlgpr retriever module")
    module_name, _, cls_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    # the file is the user's own training output (hyperparameters include config dataclasses)
    model = cls.load_from_checkpoint(ckpt, map_location=map_location, weights_only=False)
    model.eval()
    return model

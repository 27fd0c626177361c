"""A saved gallery index: a split encoded once with a trained retriever, loaded in seconds.

A folder written by :func:`build_index` (``scripts/index_gallery.py``) holds

* ``embeddings.safetensors``: ``embeddings [G, D]`` (float32, L2-normalised), ``place_ids [G]``,
  ``coords [G, 2]`` (latitude, longitude; NaN where unknown);
* ``index.json``: the format, the retriever's fingerprint (:func:`retriever_fingerprint`), where
  the gallery came from, and per image its key, description, attributes and image location
  (a thumbnail under ``thumbs/`` when they were written, else ``<shard>#<key>.jpg``);
* optionally ``faiss.index``: an exact (``flat``) or approximate (``ivf``, for millions of
  images) faiss index over the same embeddings.

:meth:`GalleryIndex.load` refuses, in one line naming the file, an index built with another
retriever than the one it is given.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dlgpr.data.reader import iter_records
from dlgpr.data.schema import PlaceRecord
from dlgpr.data.shards import iter_tar_members, read_manifest
from dlgpr.ranking import Gallery
from dlgpr.search import topk_search
from dlgpr.utils import require_extra

__all__ = ["INDEX_FORMAT", "GalleryIndex", "IndexMismatchError", "build_index", "index_gallery", "retriever_fingerprint"]

INDEX_FORMAT = "dlgpr-gallery-index"
INDEX_VERSION = 1
EMBEDDINGS_FILE = "embeddings.safetensors"
META_FILE = "index.json"
FAISS_FILE = "faiss.index"
THUMBS_DIR = "thumbs"

FaissKind = Literal["none", "flat", "ivf"]


class IndexMismatchError(ValueError):
    """The index was built with another retriever (or is not an index of this format)."""


def retriever_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a retriever: its class and every tensor of its state dict (names, shapes, dtypes,
    values). Two modules with the same weights agree whatever checkpoint file they came from."""
    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class GalleryIndex:
    """An encoded gallery with what a person needs to see of each image.

    ``embeddings [G, D]`` float32 normalised; ``place_ids [G]``; ``coords [G, 2]`` (lat, lon,
    NaN unknown); per image ``keys``, ``descriptions``, ``attributes`` and ``images`` (a file
    path, or ``<shard path>#<member>`` inside a shard). ``meta``: what ``index.json`` says
    besides the per-image lists. ``faiss_index``: the loaded faiss index, if any.
    """

    embeddings: Tensor
    place_ids: Tensor
    coords: Tensor
    keys: list[str]
    descriptions: list[str]
    attributes: list[dict[str, Any]]
    images: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    faiss_index: Any = None

    def __post_init__(self) -> None:
        n = self.embeddings.shape[0]
        lists = (self.keys, self.descriptions, self.attributes, self.images)
        if not (self.place_ids.shape[0] == self.coords.shape[0] == n and all(len(x) == n for x in lists)):
            raise ValueError("gallery index fields must all have one entry per image")

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def gallery(self) -> Gallery:
        """The :class:`~dlgpr.ranking.Gallery` the dialogue code searches (images load from thumbnails when there are some)."""
        image_fn = None
        if self.images and all(not loc.count("#") and Path(loc).is_file() for loc in self.images[:1]):
            images = self.images
            image_fn = lambda i: Image.open(images[i]).convert("RGB")  # noqa: E731
        return Gallery(self.embeddings, self.place_ids, list(self.keys), list(self.descriptions), list(self.attributes), image_fn=image_fn)

    def coordinates(self, row: int) -> tuple[float, float] | None:
        lat, lon = (float(x) for x in self.coords[row])
        return None if math.isnan(lat) or math.isnan(lon) else (lat, lon)

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-``k`` ``(scores, rows)`` of ``queries [Q, D]``: through the faiss index when one is
        loaded (approximate for ``ivf``; ``-1`` rows pad a short list), else exact (torch)."""
        if self.faiss_index is None:
            s, i = topk_search(queries.float(), self.embeddings, k, backend="torch")
            return s.cpu(), i.cpu()
        k = min(int(k), len(self))
        s, i = self.faiss_index.search(np.ascontiguousarray(queries.detach().float().cpu().numpy()), k)
        return torch.from_numpy(s), torch.from_numpy(i).long()

    # ---- files ----------------------------------------------------------------------------------

    def save(self, out_dir: str | Path, faiss: FaissKind = "none", nlist: int | None = None, nprobe: int = 8) -> Path:
        """Write the index to ``out_dir`` (see the module docstring); ``faiss`` adds ``faiss.index``."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file(
            {"embeddings": self.embeddings.float().contiguous(), "place_ids": self.place_ids.long().contiguous(), "coords": self.coords.double().contiguous()},
            str(out / EMBEDDINGS_FILE),
        )
        meta = {**self.meta, "format": INDEX_FORMAT, "version": INDEX_VERSION, "size": len(self), "dim": int(self.embeddings.shape[1])}
        if faiss != "none":
            self.faiss_index = _faiss_index(self.embeddings, faiss, nlist, nprobe)
            require_extra("faiss", "a faiss gallery index").write_index(self.faiss_index, str(out / FAISS_FILE))
            meta["faiss"] = {"kind": faiss, "nlist": getattr(self.faiss_index, "nlist", None), "nprobe": nprobe if faiss == "ivf" else None}
        else:
            (out / FAISS_FILE).unlink(missing_ok=True)
            meta.pop("faiss", None)
        root = out.resolve()
        images = [str(Path(p).resolve().relative_to(root)) if "#" not in p and Path(p).resolve().is_relative_to(root) else p for p in self.images]
        payload = {"meta": meta, "keys": self.keys, "descriptions": self.descriptions, "attributes": self.attributes, "images": images}
        (out / META_FILE).write_text(json.dumps(payload, ensure_ascii=False))
        self.meta = meta
        return out

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None, with_faiss: bool = True) -> "GalleryIndex":
        """Read an index folder; with ``fingerprint`` (:func:`retriever_fingerprint` of the retriever
        that will search it) refuse one built with another retriever (:class:`IndexMismatchError`)."""
        from safetensors.torch import load_file

        folder = Path(path)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: no gallery index here (build one with scripts/index_gallery.py)")
        try:
            payload = json.loads(meta_path.read_text())
            meta = payload["meta"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise IndexMismatchError(f"{meta_path}: not a gallery index ({exc.__class__.__name__})") from None
        if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION:
            raise IndexMismatchError(f"{meta_path}: format {meta.get('format')!r} v{meta.get('version')}, expected {INDEX_FORMAT!r} v{INDEX_VERSION}")
        if fingerprint is not None and meta.get("retriever_fingerprint") != fingerprint:
            raise IndexMismatchError(
                f"{meta_path}: built with another retriever (fingerprint {str(meta.get('retriever_fingerprint'))[:12]}, "
                f"checkpoint {meta.get('checkpoint')}) than the one loaded ({fingerprint[:12]}); rebuild it with scripts/index_gallery.py"
            )
        tensors = load_file(str(folder / EMBEDDINGS_FILE))
        root = folder.resolve()
        images = [p if "#" in p or Path(p).is_absolute() else str(root / p) for p in payload["images"]]
        index = cls(tensors["embeddings"], tensors["place_ids"], tensors["coords"], payload["keys"], payload["descriptions"],
                    payload["attributes"], images, meta)
        if with_faiss and meta.get("faiss"):
            faiss = require_extra("faiss", "the index's faiss file")
            index.faiss_index = faiss.read_index(str(folder / FAISS_FILE))
            if meta["faiss"].get("nprobe"):
                index.faiss_index.nprobe = int(meta["faiss"]["nprobe"])
        return index


def _faiss_index(embeddings: Tensor, kind: FaissKind, nlist: int | None, nprobe: int) -> Any:
    """An exact inner-product index (``flat``) or an inverted-file one (``ivf``: ``nlist`` k-means
    cells, ``nprobe`` of them searched; default ``nlist`` about 4 sqrt(G), at least 39 training
    points per cell as faiss asks)."""
    faiss = require_extra("faiss", "a faiss gallery index")
    x = np.ascontiguousarray(embeddings.detach().float().cpu().numpy())
    g, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        cells = nlist if nlist is not None else max(1, min(int(4 * math.sqrt(g)), g // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = min(nprobe, cells)
    else:
        raise ValueError(f"faiss must be 'none', 'flat' or 'ivf', got {kind!r}")
    index.add(x)
    return index


def _thumbnail(data: bytes, size: int) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


@torch.inference_mode()
def build_index(
    module: Any,
    data_dir: str | Path,
    split: str,
    out_dir: str | Path | None = None,
    checkpoint: str | None = None,
    thumbnails: bool = True,
    thumbnail_size: int = 256,
    faiss: FaissKind = "none",
    nlist: int | None = None,
    nprobe: int = 8,
    batch_size: int = 256,
    num_workers: int = 0,
) -> GalleryIndex:
    """Encode every image of ``split`` in ``data_dir`` with ``module`` (``encode_images``) and,
    with ``out_dir``, save the index there (thumbnails of at most ``thumbnail_size`` px under
    ``thumbs/`` when ``thumbnails``). Without ``out_dir`` the index stays in memory and its
    images are located inside the shards."""
    from dlgpr.retrieval import encode_gallery

    data_dir = Path(data_dir)
    start = time.perf_counter()
    gallery = encode_gallery(module, data_dir, split, batch_size=batch_size, num_workers=num_workers)
    shards = read_manifest(data_dir).split_shards(split)
    records: dict[str, PlaceRecord] = {}
    where: dict[str, str] = {}
    for s in shards:
        for r in iter_records(data_dir / s.path):
            records[r.key] = r
            where[r.key] = s.path
    images = [f"{(data_dir / where[k]).resolve()}#{k}.jpg" for k in gallery.keys]
    if out_dir is not None and thumbnails:
        thumbs = Path(out_dir) / THUMBS_DIR
        thumbs.mkdir(parents=True, exist_ok=True)
        wanted = {k: i for i, k in enumerate(gallery.keys)}
        for s in shards:
            for name, data in iter_tar_members(data_dir / s.path):
                key = name[: -len(".jpg")] if name.endswith(".jpg") else None
                if key in wanted:
                    (thumbs / f"{key}.jpg").write_bytes(_thumbnail(data, thumbnail_size))
                    images[wanted[key]] = str(thumbs / f"{key}.jpg")
    coords = torch.tensor([[records[k].lat, records[k].lon] for k in gallery.keys], dtype=torch.float64)
    meta = {
        "retriever_fingerprint": retriever_fingerprint(module),
        "checkpoint": checkpoint,
        "data_dir": str(data_dir.resolve()),
        "split": split,
        "encode_seconds": round(time.perf_counter() - start, 3),
    }
    index = GalleryIndex(gallery.embeddings.float(), gallery.place_ids, coords, gallery.keys, gallery.descriptions, gallery.attributes, images, meta)
    if out_dir is not None:
        index.save(out_dir, faiss=faiss, nlist=nlist, nprobe=nprobe)
    elif faiss != "none":
        index.faiss_index = _faiss_index(index.embeddings, faiss, nlist, nprobe)
    return index


def index_gallery(
    ckpt: str,
    out: str,
    data_dir: str = "data/synthcities",
    split: str = "test",
    thumbnails: bool = True,
    thumbnail_size: int = 256,
    faiss: FaissKind = "none",
    nlist: int | None = None,
    nprobe: int = 8,
    batch_size: int = 256,
    num_workers: int = 0,
) -> GalleryIndex:
    """Encode ``split`` of ``data_dir`` with the retriever of ``ckpt`` and save the index in ``out``
    (``scripts/index_gallery.py``, ``python -m dlgpr index``).

    Args:
        ckpt: retriever checkpoint written by ``python -m dlgpr fit``.
        out: the index folder to write.
        data_dir: DQ-Cities / SynthCities shards.
        split: the split to encode.
        thumbnails: write a JPEG thumbnail per image under ``out/thumbs``.
        thumbnail_size: longest side of a thumbnail in pixels.
        faiss: also write ``faiss.index``: ``flat`` (exact) or ``ivf`` (approximate).
        nlist: IVF cells (default about 4 sqrt(G)).
        nprobe: IVF cells searched per query.
        batch_size: images per encoder call.
        num_workers: data-loader workers.
    """
    from dlgpr.retrieval import load_retriever

    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = load_retriever(ckpt, map_location=device)
    start = time.perf_counter()
    build_index(module, data_dir, split, out, checkpoint=str(ckpt), thumbnails=thumbnails, thumbnail_size=thumbnail_size, faiss=faiss,
                nlist=nlist, nprobe=nprobe, batch_size=batch_size, num_workers=num_workers)
    built = time.perf_counter() - start
    start = time.perf_counter()
    index = GalleryIndex.load(out, fingerprint=retriever_fingerprint(module))
    print(f"indexed {len(index)} images of {split} ({index.embeddings.shape[1]}-d) into {out} in {built:.1f} s; "
          f"loading it back and checking the retriever took {time.perf_counter() - start:.2f} s")
    return index

"""Encode a split of a shard folder once with a trained retriever and save it as a gallery index.

    python scripts/index_gallery.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt \
        --data_dir data/synthcities --split test --out runs/index/test
    python scripts/index_gallery.py ... --faiss ivf      # an approximate faiss index too (millions of images)

Writes ``embeddings.safetensors``, ``index.json`` (keys, place ids, coordinates, descriptions,
attributes, image locations, the retriever's fingerprint), ``thumbs/`` (unless
``--thumbnails false``) and ``faiss.index`` with ``--faiss flat|ivf`` (``dlgpr.app.index``).
``python -m dlgpr.app --terminal --index <out>`` then starts without encoding anything.
"""

from __future__ import annotations

import time

import torch
from jsonargparse import auto_cli

from dlgpr.app.index import FaissKind, GalleryIndex, build_index, retriever_fingerprint
from dlgpr.retrieval import load_retriever


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
    """Args:
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


if __name__ == "__main__":
    auto_cli(index_gallery, as_positional=False)

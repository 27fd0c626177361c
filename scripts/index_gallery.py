"""Encode a split of a shard folder once with a trained retriever and save it as a gallery index.

    python scripts/index_gallery.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt \
        --data_dir data/synthcities --split test --out runs/index/test
    python scripts/index_gallery.py ... --faiss ivf      # an approximate faiss index too (millions of images)

Writes ``embeddings.safetensors``, ``index.json`` (keys, place ids, coordinates, descriptions,
attributes, image locations, the retriever's fingerprint), ``thumbs/`` (unless
``--thumbnails false``) and ``faiss.index`` with ``--faiss flat|ivf`` (``dlgpr.app.index``).
``python -m dlgpr.app --index <out>`` then starts without encoding anything. ``python -m dlgpr
index ...`` is the same command (``dlgpr.app.index.index_gallery``).
"""

from __future__ import annotations

from jsonargparse import auto_cli

from dlgpr.app.index import index_gallery

__all__ = ["index_gallery"]

if __name__ == "__main__":
    auto_cli(index_gallery, as_positional=False)

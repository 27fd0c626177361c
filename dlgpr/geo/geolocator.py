"""GPS predictors: the retrieval geolocator (nearest geo-tagged neighbours) and a GeoCLIP adapter.

Both implement :class:`~dlgpr.geo.predict.GeoPredictor` and return coordinates (plus the city
and country of those coordinates when given a gazetteer, by its ``reverse`` lookup), so they
sit in the same table as the reasoning VLMs (docs/GLOBE.md, "Evaluation").

:class:`RetrievalGeolocator` (Im2GPS-style retrieval with a kernel vote): a trained image
encoder (the project's CMPL retriever) embeds a reference set of geo-tagged images once; a
query image is located by its ``k`` most similar reference images:

1. weights ``w = softmax(similarity / temperature)`` over the top ``k`` neighbours;
2. each neighbour's score is the summed weight of the neighbours within ``radius_km`` of it
   (itself included): a kernel density of the neighbours' locations;
3. the best-scoring neighbour's cluster (the neighbours within ``radius_km`` of it) gives the
   coordinates, their weighted spherical mean, and its score (the cluster's weight share, in
   (0, 1]) is the confidence.

A lone very similar neighbour wins when the temperature is low; a dense group of fairly similar
ones wins when it is high. With ``exclude_same_place`` the reference images of the query's own
place (and the query's own key) are left out, so the geolocator can locate its own reference
split (the distillation pipeline runs it on the train split) without seeing the answer.

:class:`GeoCLIPPredictor` wraps the ``geoclip`` package (GeoCLIP, NeurIPS 2023: a CLIP
ViT-L/14 image encoder against a gallery of 100k GPS coordinates), which is not a dependency of
this project: ``pip install geoclip`` and its weights (the CLIP backbone comes from the Hugging
Face hub) are needed only when it is used.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from dlgpr.data.geo import GeoReadStats, GeoSample, read_synthcities_geo
from dlgpr.data.streaming import ImageTransform
from dlgpr.geo.distance import haversine_km, spherical_mean
from dlgpr.geo.gazetteer import Gazetteer, load_gazetteer
from dlgpr.geo.predict import GeoPrediction
from dlgpr.utils import eval_mode

log = logging.getLogger(__name__)

__all__ = ["BAD_IMAGE", "NO_NEIGHBOURS", "GeoCLIPPredictor", "RetrievalGeolocator", "decode_images", "kernel_vote",
           "resolve_device"]

BAD_IMAGE = "bad_image"
"""Failure kind: the sample's image is missing or does not decode."""
NO_NEIGHBOURS = "no_neighbours"
"""Failure kind: every reference image was excluded for this query (or the reference is empty)."""

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def resolve_device(device: str) -> torch.device:
    """``"auto"``: cuda when available, else cpu; anything else as a torch device."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)


def decode_images(samples: Sequence[GeoSample], stats: Counter | None = None) -> list[Image.Image | None]:
    """Each sample's RGB image, ``None`` where it is missing or does not decode (counted in
    ``stats[BAD_IMAGE]`` and logged once per batch)."""
    images: list[Image.Image | None] = []
    bad = []
    for s in samples:
        try:
            images.append(s.image())
        except _DECODE_ERRORS as exc:
            images.append(None)
            bad.append(f"{s.key} ({type(exc).__name__})")
    if bad:
        if stats is not None:
            stats[BAD_IMAGE] += len(bad)
        log.warning("%d image(s) do not decode, e.g. %s", len(bad), bad[0])
    return images


def kernel_vote(sims: np.ndarray, lat: np.ndarray, lon: np.ndarray, radius_km: float, temperature: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The kernel vote of the module docstring over each query's neighbours.

    Args:
        sims: ``[B, k]`` similarities of each query's neighbours (``-inf``: no neighbour in that slot).
        lat, lon: ``[B, k]`` the neighbours' coordinates.

    Returns ``(lat, lon, confidence, cluster_size)``, each ``[B]``; NaN (size 0) for a query
    without any neighbour. Ties go to the earlier neighbour (the more similar one when sorted).
    """
    sims = np.asarray(sims, dtype=np.float64)
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    n = len(sims)
    out_lat, out_lon, conf, size = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=np.int64)
    if sims.ndim != 2 or sims.shape[1] == 0:
        return out_lat, out_lon, conf, size
    valid = np.isfinite(sims)
    logits = np.where(valid, sims / temperature, -np.inf)
    top = np.max(logits, axis=1, keepdims=True)
    w = np.where(valid, np.exp(logits - np.where(np.isfinite(top), top, 0.0)), 0.0)
    w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    near = haversine_km(lat[:, :, None], lon[:, :, None], lat[:, None, :], lon[:, None, :]) <= radius_km  # [B, k, k]
    near &= valid[:, :, None] & valid[:, None, :]
    score = np.where(valid, (near * w[:, None, :]).sum(axis=2), -np.inf)  # [B, k]
    for b in range(n):
        if not valid[b].any():
            continue
        winner = int(np.argmax(score[b]))
        members = near[b, winner]
        try:
            out_lat[b], out_lon[b] = spherical_mean(lat[b, members], lon[b, members], w[b, members])
        except ValueError:  # members cancel out (a radius of half the Earth): keep the winner's own place
            out_lat[b], out_lon[b] = lat[b, winner], lon[b, winner]
        conf[b], size[b] = score[b, winner], int(members.sum())
    return out_lat, out_lon, conf, size


@dataclass
class _Reference:
    """The encoded reference set: ``emb`` [N, D] on the module's device, metadata as arrays."""

    emb: Tensor
    lat: np.ndarray
    lon: np.ndarray
    keys: list[str]
    place_ids: Tensor  # [N] int64, _NO_PLACE where the sample has none
    row_of: dict[str, int]
    digests: list[str]  # sha1 of each image's bytes: a query that is this very image reuses its embedding


_NO_PLACE = -(2**62)


def _digest(sample: GeoSample) -> str:
    return hashlib.sha1(sample.image_data()).hexdigest()


class RetrievalGeolocator:
    """Locates an image by its nearest geo-tagged reference images (see the module docstring).

    Args:
        retriever: a retriever checkpoint (``python -m dlgpr fit``), loaded by
            :func:`dlgpr.retrieval.load_retriever` on the first prediction.
        reference: the SynthCities / DQ-Cities folder (``manifest.json`` + shards) of the
            geo-tagged reference images; read and encoded once, on the first prediction.
        reference_splits: its splits that form the reference.
        k: neighbours that vote.
        radius_km: the vote's kernel radius: neighbours this close support each other.
        temperature: of the softmax over the neighbours' cosine similarities (lower: the most
            similar neighbours dominate).
        batch_size: images per encoder call (reference and queries).
        exclude_same_place: leave out the reference images of the query's ``place_id`` and its
            own key (place ids and keys are compared as they are: a query from another dataset
            whose ids happen to collide loses those neighbours).
        gazetteer: names the predicted coordinates (``reverse``): ``"world"`` (the reference's
            own world manifest), ``"geonames"`` (real places) or None (no names).
        device: ``auto`` (cuda if available) or a torch device.
        name: the method's name in tables.

    Queries whose image does not decode get a failed prediction (``error="bad_image"``) and
    are counted in :attr:`stats`; reference images that do not decode are left out and
    counted in ``stats["reference_bad_image"]``.
    """

    def __init__(self, retriever: str, reference: str, reference_splits: str | Sequence[str] = ("train",), k: int = 10,
                 radius_km: float = 25.0, temperature: float = 0.05, batch_size: int = 64, exclude_same_place: bool = True,
                 gazetteer: str | None = "world", device: str = "auto", name: str = "retrieval") -> None:
        if not Path(retriever).is_file():
            raise FileNotFoundError(f"RetrievalGeolocator.retriever: no checkpoint at {retriever}")
        if not (Path(reference) / "manifest.json").is_file():
            raise FileNotFoundError(f"RetrievalGeolocator.reference: no manifest.json in {reference}")
        splits = [reference_splits] if isinstance(reference_splits, str) else list(reference_splits)
        self.reference_stats = GeoReadStats()

        def load_module() -> Any:
            from dlgpr.retrieval import load_retriever
            return load_retriever(retriever, map_location=resolve_device(device))

        self._setup(load_module, lambda: read_synthcities_geo(reference, splits, self.reference_stats),
                    lambda: load_gazetteer(gazetteer, reference), k, radius_km, temperature, batch_size, exclude_same_place, name)

    @classmethod
    def from_module(cls, module: Any, reference: Iterable[GeoSample], gazetteer: Gazetteer | None = None, k: int = 10,
                    radius_km: float = 25.0, temperature: float = 0.05, batch_size: int = 64, exclude_same_place: bool = True,
                    name: str = "retrieval") -> "RetrievalGeolocator":
        """From a loaded module (``preprocessing()`` and ``encode_images``) and reference samples
        (encoded on the first prediction, on the module's device)."""
        self = cls.__new__(cls)
        self.reference_stats = GeoReadStats()
        self._setup(lambda: module, lambda: reference, lambda: gazetteer, k, radius_km, temperature, batch_size,
                    exclude_same_place, name)
        return self

    def _setup(self, module_fn: Callable[[], Any], reference_fn: Callable[[], Iterable[GeoSample]],
               gazetteer_fn: Callable[[], Gazetteer | None], k: int, radius_km: float, temperature: float, batch_size: int,
               exclude_same_place: bool, name: str) -> None:
        for field, value in (("k", k), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RetrievalGeolocator.{field} must be an integer >= 1, got {value!r}")
        for field, value in (("radius_km", radius_km), ("temperature", temperature)):
            if not value > 0:
                raise ValueError(f"RetrievalGeolocator.{field} must be > 0, got {value!r}")
        self.k, self.radius_km, self.temperature, self.batch_size = k, float(radius_km), float(temperature), batch_size
        self.exclude_same_place, self.name = exclude_same_place, name
        self.stats: Counter = Counter()
        self._module_fn, self._reference_fn, self._gazetteer_fn = module_fn, reference_fn, gazetteer_fn
        self._module: Any = None
        self._transform: ImageTransform | None = None
        self._reference: _Reference | None = None
        self._gazetteer: Gazetteer | None = None

    def __repr__(self) -> str:
        return (f"RetrievalGeolocator(name={self.name!r}, k={self.k}, radius_km={self.radius_km}, "
                f"temperature={self.temperature}, exclude_same_place={self.exclude_same_place})")

    # -- lazy state --------------------------------------------------------------------------------
    @property
    def module(self) -> Any:
        if self._module is None:
            self._module = self._module_fn()
            self._transform = ImageTransform(self._module.preprocessing())
            self._gazetteer = self._gazetteer_fn()
        return self._module

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def reference(self) -> _Reference:
        """The encoded reference set (encoded on the first call, then kept)."""
        if self._reference is None:
            embs, lat, lon, keys, places, digests = [], [], [], [], [], []
            for emb, kept in self._embed(self._reference_fn(), count_as="reference_bad_image"):
                embs.append(emb)
                digests += [_digest(s) for s in kept]
                lat += [s.lat for s in kept]
                lon += [s.lon for s in kept]
                keys += [s.key for s in kept]
                places += [_NO_PLACE if s.place_id is None else int(s.place_id) for s in kept]
            dim = embs[0].shape[1] if embs else 1
            self._reference = _Reference(
                emb=torch.cat(embs) if embs else torch.zeros(0, dim, device=self.device),
                lat=np.asarray(lat, dtype=np.float64), lon=np.asarray(lon, dtype=np.float64), keys=keys,
                place_ids=torch.tensor(places, dtype=torch.int64, device=self.device), row_of={k: i for i, k in enumerate(keys)},
                digests=digests)
            log.info("%s: %d reference images encoded", self.name, len(keys))
        return self._reference

    def _embed(self, samples: Iterable[GeoSample], count_as: str = BAD_IMAGE) -> Iterator[tuple[Tensor, list[GeoSample]]]:
        """``(embeddings [b, D] on the device, the samples they belong to)`` per batch of images that decode."""
        module = self.module
        batch: list[GeoSample] = []

        def flush() -> Iterator[tuple[Tensor, list[GeoSample]]]:
            images = decode_images(batch)
            kept = [(s, im) for s, im in zip(batch, images) if im is not None]
            self.stats[count_as] += len(batch) - len(kept)
            if kept:
                x = torch.stack([self._transform(im) for _, im in kept]).to(self.device)  # type: ignore[misc]
                with torch.inference_mode(), eval_mode(module):
                    emb = F.normalize(module.encode_images(x).float(), dim=-1)
                yield emb, [s for s, _ in kept]

        for s in samples:
            batch.append(s)
            if len(batch) == self.batch_size:
                yield from flush()
                batch = []
        if batch:
            yield from flush()

    def _query_embeddings(self, samples: Sequence[GeoSample], ref: _Reference) -> Iterator[tuple[Tensor, list[GeoSample]]]:
        """Embeddings of the queries: a query that is a reference image (same key, same bytes: a
        split located against itself, its own place left out) reuses the reference embedding;
        the others are encoded."""
        reused: list[tuple[int, GeoSample]] = []
        fresh: list[GeoSample] = []
        for s in samples:
            row = ref.row_of.get(s.key)
            try:
                same = row is not None and ref.digests[row] == _digest(s)
            except (OSError, ValueError):
                same = False
            if same:
                reused.append((row, s))  # type: ignore[arg-type]
            else:
                fresh.append(s)
        for start in range(0, len(reused), self.batch_size):
            part = reused[start : start + self.batch_size]
            yield ref.emb[torch.tensor([row for row, _ in part], device=ref.emb.device)], [s for _, s in part]
        yield from self._embed(fresh)

    # -- prediction --------------------------------------------------------------------------------
    def neighbours(self, emb: Tensor, queries: Sequence[GeoSample]) -> tuple[np.ndarray, np.ndarray]:
        """``(sims, rows)`` ``[B, k']`` of the queries' top neighbours, most similar first
        (``k' = min(k, reference size)``; ``-inf`` similarity where a slot holds an excluded image)."""
        ref = self.reference()
        if len(ref.keys) == 0:
            return np.full((len(queries), 0), -np.inf), np.zeros((len(queries), 0), dtype=np.int64)
        sims = emb @ ref.emb.T  # [B, N]
        if self.exclude_same_place:
            q_place = torch.tensor([_NO_PLACE + 1 if q.place_id is None else int(q.place_id) for q in queries],
                                   dtype=torch.int64, device=sims.device)
            sims = sims.masked_fill(q_place[:, None] == ref.place_ids[None, :], -math.inf)
            for b, q in enumerate(queries):
                row = ref.row_of.get(q.key)
                if row is not None:
                    sims[b, row] = -math.inf
        top = torch.topk(sims, min(self.k, sims.shape[1]), dim=1)
        return top.values.double().cpu().numpy(), top.indices.cpu().numpy()

    def predict(self, samples: Sequence[GeoSample]) -> list[GeoPrediction]:
        """One prediction per sample, in order (see the class docstring)."""
        samples = list(samples)
        out: dict[str, GeoPrediction] = {}
        ref = self.reference()
        for emb, kept in self._query_embeddings(samples, ref):
            sims, rows = self.neighbours(emb, kept)
            lat, lon, conf, size = kernel_vote(sims, ref.lat[rows], ref.lon[rows], self.radius_km, self.temperature)
            for b, s in enumerate(kept):
                if not size[b]:
                    self.stats[NO_NEIGHBOURS] += 1
                    out[s.key] = GeoPrediction.failed(s.key, NO_NEIGHBOURS)
                    continue
                city = country = ""
                if self._gazetteer is not None:
                    match = self._gazetteer.reverse(float(lat[b]), float(lon[b]))
                    city, country = match.city or "", match.country or ""
                out[s.key] = GeoPrediction(
                    key=s.key, city=city, country=country, lat=float(lat[b]), lon=float(lon[b]), confidence=float(conf[b]),
                    extra={"cluster_size": int(size[b]), "top_key": ref.keys[int(rows[b, 0])], "top_sim": round(float(sims[b, 0]), 5)})
        return [out.get(s.key) or GeoPrediction.failed(s.key, BAD_IMAGE) for s in samples]


# ---- GeoCLIP -------------------------------------------------------------------------------------


def _import_geoclip() -> Any:
    try:
        return importlib.import_module("geoclip")
    except ImportError:
        raise ImportError("GeoCLIPPredictor needs the geoclip package: pip install geoclip") from None


class GeoCLIPPredictor:
    """GeoCLIP (Vivanco Cepeda et al., NeurIPS 2023) as a :class:`~dlgpr.geo.predict.GeoPredictor`.

    Each image is scored against GeoCLIP's GPS gallery (100k coordinates); the top-1 coordinate
    is the prediction and its softmax probability the confidence; the top ``top_k`` candidates
    are kept in ``extra["top_k"]`` as ``[lat, lon, probability]``.

    Args:
        weights: a Hugging Face hub id or a local release folder for ``GeoCLIP.from_pretrained``;
            None builds ``GeoCLIP()`` with the weights shipped in the package (its CLIP ViT-L/14
            backbone still comes from the hub, or the hub cache when offline).
        local_files_only: never download (the hub cache must hold the weights).
        gazetteer: names the coordinates by ``reverse``: ``"geonames"`` (real places) or None.
        batch_size: images per forward pass.
        device: ``auto`` (cuda if available) or a torch device.

    The model is loaded on the first prediction; a missing package or missing weights give a
    one-line error naming what to install or download.
    """

    def __init__(self, weights: str | None = None, local_files_only: bool = True, gazetteer: str | None = "geonames",
                 batch_size: int = 32, top_k: int = 5, device: str = "auto", name: str = "geoclip") -> None:
        for field, value in (("batch_size", batch_size), ("top_k", top_k)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GeoCLIPPredictor.{field} must be an integer >= 1, got {value!r}")
        self.weights, self.local_files_only, self.batch_size, self.top_k = weights, local_files_only, batch_size, top_k
        self.device_name, self.name, self._gazetteer_kind = device, name, gazetteer
        self.stats: Counter = Counter()
        self._model: Any = None
        self._gazetteer: Gazetteer | None = None

    def __repr__(self) -> str:
        return f"GeoCLIPPredictor(name={self.name!r}, weights={self.weights!r})"

    @property
    def model(self) -> Any:
        """The GeoCLIP model, loaded on first use."""
        if self._model is None:
            geoclip = _import_geoclip()
            try:
                if self.weights is None:
                    model = geoclip.GeoCLIP()
                else:
                    model = geoclip.GeoCLIP.from_pretrained(self.weights, local_files_only=self.local_files_only)
            except (OSError, ValueError, RuntimeError) as exc:
                where = self.weights or "the package's weights + openai/clip-vit-large-patch14"
                raise RuntimeError(
                    f"GeoCLIP weights not available ({where}: {type(exc).__name__}); download them once with network "
                    f"access (they land in the Hugging Face cache) or pass weights=<local release folder>") from None
            self._model = model.to(resolve_device(self.device_name)).eval()
            self._gazetteer = load_gazetteer(self._gazetteer_kind)
        return self._model

    def predict(self, samples: Sequence[GeoSample]) -> list[GeoPrediction]:
        """One prediction per sample, in order; an image that does not decode is a failed prediction."""
        samples = list(samples)
        model = self.model
        out: list[GeoPrediction] = []
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start:start + self.batch_size]
            images = decode_images(chunk, self.stats)
            good = [i for i, im in enumerate(images) if im is not None]
            preds: dict[int, GeoPrediction] = {}
            if good:
                gallery = model.gps_gallery
                with torch.inference_mode():
                    x = model.image_encoder.preprocess_image([images[i] for i in good]).to(gallery.device)
                    probs = model(x, gallery).float().softmax(dim=-1)  # [b, G]
                    top = torch.topk(probs, min(self.top_k, probs.shape[1]), dim=1)
                gps = gallery[top.indices].double().cpu().numpy()  # [b, top_k, 2] (lat, lon)
                p = top.values.double().cpu().numpy()
                for j, i in enumerate(good):
                    lat, lon = float(gps[j, 0, 0]), float(gps[j, 0, 1])
                    city = country = ""
                    if self._gazetteer is not None:
                        match = self._gazetteer.reverse(lat, lon)
                        city, country = match.city or "", match.country or ""
                    preds[i] = GeoPrediction(key=chunk[i].key, city=city, country=country, lat=lat, lon=lon,
                                             confidence=float(p[j, 0]),
                                             extra={"top_k": [[round(float(a), 6), round(float(b), 6), round(float(c), 6)]
                                                              for (a, b), c in zip(gps[j], p[j])]})
            out += [preds.get(i) or GeoPrediction.failed(s.key, BAD_IMAGE) for i, s in enumerate(chunk)]
        return out

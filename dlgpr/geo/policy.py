"""Trained GLOBE policies as geo predictors, and the hybrid: reason to a city, then retrieve inside it.

* :class:`PolicyGeoPredictor`: a policy exported by ``SFTModule`` / ``GRPOModule`` (the embedded
  image policy, or a VLM export) answers GLOBE's prompt greedily; the reply is read by
  :func:`~dlgpr.geo.answer.parse_answer` and the names geocoded by the evaluation's gazetteer, so
  ``scripts/evaluate_geo.py`` scores it like every other method.
* :class:`HybridGeoPredictor`: GLOBE's stated future work. Reasoning names the city but cannot
  place the photo inside it; image retrieval can, once the gallery is narrowed to that city. The
  policy's city is geocoded, the retrieval geolocator's reference gallery is cut to the images
  within ``radius_km`` of that city's centre, and the coordinates of the most similar image left
  are the answer. When the policy gives no city that resolves, or no reference image lies in it,
  the full-gallery retrieval answers instead (counted in ``stats``).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch

from dlgpr.data.geo import GeoSample
from dlgpr.geo.answer import parse_answer
from dlgpr.geo.distance import haversine_km
from dlgpr.geo.gazetteer import Gazetteer, load_gazetteer
from dlgpr.geo.geolocator import RetrievalGeolocator
from dlgpr.geo.predict import GeoPrediction, GeoPredictor

__all__ = ["PolicyGeoPredictor", "HybridGeoPredictor"]


class PolicyGeoPredictor:
    """A trained policy (a dlgpr export folder) answering "where was this photo taken?" greedily.

    Args:
        policy: the export folder (``lightning_logs/globe/grpo_full/policy``).
        name: the method's row label.
        batch_size: images per ``generate`` call.
        max_new_tokens: reply length limit.
        max_prompt_tokens: prompt length limit (as in training).
        device: ``cpu``, ``cuda`` or ``auto``.
    """

    def __init__(self, policy: str, name: str = "policy", batch_size: int = 32, max_new_tokens: int = 128,
                 max_prompt_tokens: int = 256, device: str = "auto") -> None:
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")
        self.policy, self.name, self.batch_size, self.max_new_tokens = policy, name, batch_size, max_new_tokens
        self.max_prompt_tokens, self.device = max_prompt_tokens, device
        self._loaded: tuple[Any, Any] | None = None
        self.stats: Counter = Counter()

    def __repr__(self) -> str:
        return f"PolicyGeoPredictor(policy={self.policy!r}, name={self.name!r}, max_new_tokens={self.max_new_tokens})"

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from dlgpr.models.prompting import PromptConfig, PromptEncoder
            from dlgpr.models.questioner import PolicyConfig, load_policy

            model, processor = load_policy(PolicyConfig(model=self.policy))
            dev = self.device if self.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
            model = model.to(dev).eval()
            self._loaded = (model, PromptEncoder(processor, PromptConfig(max_prompt_tokens=self.max_prompt_tokens)))
        return self._loaded

    def replies(self, images: Sequence[Any]) -> list[str]:
        """Greedy replies to GLOBE's prompt, one per image."""
        from dlgpr.models.prompting import generate, geo_messages

        model, encoder = self._load()
        out: list[str] = []
        for start in range(0, len(images), self.batch_size):
            part = images[start : start + self.batch_size]
            enc = encoder.encode([geo_messages(im) for im in part], model)
            ids = generate(model, encoder.tokenizer, enc, self.max_new_tokens, eos_token_id=encoder.tokenizer.eos_token_id)
            new = ids[:, enc["input_ids"].shape[1] :]
            out += [encoder.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
        return out

    def predict(self, samples: Sequence[GeoSample]) -> list[GeoPrediction]:
        samples = list(samples)
        images: list[Any] = []
        rows: list[int] = []
        out: list[GeoPrediction | None] = [None] * len(samples)
        for i, s in enumerate(samples):
            try:
                images.append(s.image())
                rows.append(i)
            except (OSError, ValueError):
                self.stats["bad_image"] += 1
                out[i] = GeoPrediction.failed(s.key, "bad_image")
        for i, raw in zip(rows, self.replies(images)):
            a = parse_answer(raw)
            key = samples[i].key
            self.stats["well_formed"] += int(a.well_formed)
            out[i] = (GeoPrediction(key=key, city=a.city, country=a.country, reasoning=a.reasoning, raw=raw)
                      if a.ok else GeoPrediction(key=key, ok=False, error=a.error, reasoning=a.reasoning, raw=raw))
        return [p for p in out if p is not None]


class HybridGeoPredictor:
    """The policy's city narrows the retrieval geolocator's gallery; the nearest image there answers.

    Args:
        policy: names the city (a :class:`PolicyGeoPredictor` or any predictor giving names).
        geolocator: a :class:`~dlgpr.geo.geolocator.RetrievalGeolocator` (its retriever, reference
            gallery and ``exclude_same_place`` are used; its vote is not).
        gazetteer: geocodes the policy's city (``world``, ``geonames`` or a gazetteer).
        world: the geo world of a ``world`` gazetteer.
        radius_km: a reference image belongs to the city when it lies this close to its centre.
        nearest_cities: how many cities the gallery is cut to: the named city and the
            ``nearest_cities - 1`` cities of the gazetteer nearest to it (1: the named city alone).
            More cities forgive a policy that names a neighbour of the right city, at the price of
            a larger gallery to retrieve from.
        name: the method's row label.
    """

    def __init__(self, policy: GeoPredictor, geolocator: RetrievalGeolocator, gazetteer: str | Gazetteer = "world",
                 world: str | None = "data/synthcities-geo", radius_km: float = 25.0, nearest_cities: int = 1,
                 name: str = "hybrid") -> None:
        if not radius_km > 0:
            raise ValueError(f"radius_km must be > 0, got {radius_km}")
        if nearest_cities < 1:
            raise ValueError(f"nearest_cities must be >= 1, got {nearest_cities}")
        self.policy, self.geolocator, self.radius_km, self.name = policy, geolocator, float(radius_km), name
        self.nearest_cities = int(nearest_cities)
        self._gazetteer_spec, self._world = gazetteer, world
        self._gazetteer: Gazetteer | None = None
        self.stats: Counter = Counter()

    def __repr__(self) -> str:
        return (f"HybridGeoPredictor(policy={self.policy!r}, geolocator={self.geolocator!r}, radius_km={self.radius_km}, "
                f"nearest_cities={self.nearest_cities}, name={self.name!r})")

    def _centres(self, match: Any) -> list[tuple[float, float]]:
        """The named city's centre, then those of its nearest neighbours in the gazetteer."""
        centres = [(match.lat, match.lon)]
        if self.nearest_cities > 1:
            nearest = getattr(self._gazetteer, "nearest_cities", None)
            if nearest is None:
                raise TypeError(f"nearest_cities={self.nearest_cities} needs a gazetteer with nearest_cities(lat, lon, k)")
            others = [(m.lat, m.lon) for m in nearest(match.lat, match.lon, self.nearest_cities + 1)
                      if (m.lat, m.lon) != (match.lat, match.lon)]
            centres += others[: self.nearest_cities - 1]
        return centres

    def predict(self, samples: Sequence[GeoSample]) -> list[GeoPrediction]:
        samples = list(samples)
        if self._gazetteer is None:
            self._gazetteer = load_gazetteer(self._gazetteer_spec, self._world)
        geo = self.geolocator
        ref = geo.reference()
        named = {p.key: p for p in self.policy.predict(samples)}
        out: dict[str, GeoPrediction] = {}
        fallback: list[GeoSample] = []
        inside_of: dict[tuple[float, float], np.ndarray] = {}  # the gallery mask of each named city, computed once
        for emb, kept in geo._query_embeddings(samples, ref):
            sims = emb @ ref.emb.T  # [b, N]
            for b, s in enumerate(kept):
                p = named.get(s.key)
                match = self._gazetteer.resolve(p.city, p.country or None) if p is not None and p.ok and p.city else None
                if match is None or match.level != "city":
                    self.stats["no_city"] += 1
                    fallback.append(s)
                    continue
                city = (match.lat, match.lon)
                if city not in inside_of:
                    inside_of[city] = np.logical_or.reduce([haversine_km(ref.lat, ref.lon, lat, lon) <= self.radius_km
                                                            for lat, lon in self._centres(match)])  # [N]
                inside = torch.as_tensor(inside_of[city], device=sims.device)  # [N]
                row_sims = sims[b].masked_fill(~inside, -math.inf)
                if geo.exclude_same_place and s.place_id is not None:
                    row_sims = row_sims.masked_fill(ref.place_ids == int(s.place_id), -math.inf)
                own = ref.row_of.get(s.key)
                if geo.exclude_same_place and own is not None:
                    row_sims[own] = -math.inf
                best = int(row_sims.argmax())
                if not math.isfinite(float(row_sims[best])):
                    self.stats["empty_city"] += 1
                    fallback.append(s)
                    continue
                self.stats["narrowed"] += 1
                out[s.key] = GeoPrediction(key=s.key, city=match.city or p.city, country=match.country or p.country,
                                           lat=float(ref.lat[best]), lon=float(ref.lon[best]), reasoning=p.reasoning,
                                           extra={"top_key": ref.keys[best], "top_sim": round(float(row_sims[best]), 5)})
        for p in geo.predict(fallback) if fallback else []:
            out[p.key] = p
        return [out.get(s.key) or GeoPrediction.failed(s.key, "bad_image") for s in samples]

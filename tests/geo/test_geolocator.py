"""The retrieval geolocator (hand-made votes, a naive reference, degenerate encoders) and the GeoCLIP adapter (a fake package)."""

from __future__ import annotations

import dataclasses
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlgpr.data.geo import GeoSample, read_synthcities_geo
from dlgpr.data.streaming import ImageTransform
from dlgpr.geo.distance import haversine_km, spherical_mean
from dlgpr.geo.gazetteer import WorldGazetteer
from dlgpr.geo.geolocator import BAD_IMAGE, NO_NEIGHBOURS, GeoCLIPPredictor, RetrievalGeolocator, kernel_vote
from dlgpr.geo.predict import GeoPredictor
from tests.helpers.cmpl import tiny_module
from tests.helpers.geo import ColourEncoder, colour_sample, make_geo_world

RED, ORANGE, BLUE = (255, 0, 0), (255, 128, 0), (0, 0, 255)
WORLD = WorldGazetteer.from_manifest({
    "cities": [{"name": "Aurelia", "lat": 50.0, "lon": 0.0, "country": "XA"}, {"name": "Borgo", "lat": 0.0, "lon": 0.05, "country": "XB"}],
    "countries": [{"code": "XA", "name": "Valdoria", "lat": 50.0, "lon": 0.0}, {"code": "XB", "name": "Ostmark", "lat": 0.0, "lon": 0.0}],
})


def _three_point_reference() -> list[GeoSample]:
    """A: red, alone at (50, 0). B and C: orange, 11 km apart at (0, 0) and (0, 0.1)."""
    return [colour_sample("A", 50.0, 0.0, RED, place_id=1), colour_sample("B", 0.0, 0.0, ORANGE, place_id=2),
            colour_sample("C", 0.0, 0.1, ORANGE, place_id=3)]


def test_hand_made_vote_dense_cluster_wins_at_high_temperature() -> None:
    geo = RetrievalGeolocator.from_module(ColourEncoder(), _three_point_reference(), gazetteer=WORLD, k=3, radius_km=25.0, temperature=1.0)
    assert isinstance(geo, GeoPredictor)
    [p] = geo.predict([colour_sample("q", 10.0, 10.0, RED)])
    s = 255 / math.hypot(255, 128)  # cosine of red and orange
    w_bc = math.exp(s) / (math.exp(1.0) + 2 * math.exp(s))
    assert p.ok and p.confidence == pytest.approx(2 * w_bc, abs=1e-5)  # the B+C cluster outweighs A (0.643 > 0.357)
    assert (p.lat, p.lon) == (pytest.approx(0.0, abs=1e-6), pytest.approx(0.05, abs=1e-6))  # equal weights: the midpoint
    assert (p.city, p.country) == ("Borgo", "Ostmark")
    assert p.extra["cluster_size"] == 2 and p.extra["top_key"] == "A" and p.extra["top_sim"] == pytest.approx(1.0, abs=1e-5)


def test_hand_made_vote_most_similar_wins_at_low_temperature() -> None:
    geo = RetrievalGeolocator.from_module(ColourEncoder(), _three_point_reference(), gazetteer=WORLD, k=3, radius_km=25.0, temperature=0.05)
    [p] = geo.predict([colour_sample("q", 10.0, 10.0, RED)])
    s = 255 / math.hypot(255, 128)
    w_a = 1.0 / (1.0 + 2 * math.exp((s - 1.0) / 0.05))
    assert (p.lat, p.lon) == (pytest.approx(50.0), pytest.approx(0.0)) and p.confidence == pytest.approx(w_a, abs=1e-5)
    assert (p.city, p.country, p.extra["cluster_size"]) == ("Aurelia", "Valdoria", 1)
    # k=1: the nearest neighbour alone, with all the weight
    [p1] = RetrievalGeolocator.from_module(ColourEncoder(), _three_point_reference(), k=1, temperature=1.0).predict([colour_sample("q", 0, 0, ORANGE)])
    assert p1.confidence == pytest.approx(1.0) and p1.lat == pytest.approx(0.0) and p1.city == "" and p1.extra["top_key"] in ("B", "C")


def test_kernel_vote_weights_the_cluster_mean_and_skips_empty_slots() -> None:
    # two neighbours 50 km apart in one 100 km kernel, a third far away, one empty slot
    sims = np.array([[0.9, 0.5, 0.8, -np.inf], [-np.inf] * 4])
    lat = np.array([[0.0, 0.45, 40.0, 0.0], [0.0] * 4])
    lon = np.zeros((2, 4))
    out_lat, out_lon, conf, size = kernel_vote(sims, lat, lon, radius_km=100.0, temperature=0.1)
    w = np.exp(np.array([0.9, 0.5, 0.8]) / 0.1)
    w /= w.sum()
    assert conf[0] == pytest.approx(w[0] + w[1]) and size[0] == 2
    assert (out_lat[0], out_lon[0]) == pytest.approx(spherical_mean([0.0, 0.45], [0.0, 0.0], w[:2]))
    assert math.isnan(out_lat[1]) and math.isnan(conf[1]) and size[1] == 0


def _naive(module, reference: list[GeoSample], query: GeoSample, k: int, radius_km: float, temperature: float, exclude: bool):
    """One query at a time, one image per encoder call, plain loops."""
    transform = ImageTransform(module.preprocessing())

    def emb(s: GeoSample) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(module.encode_images(transform(s.image())[None]).float(), dim=-1)[0]

    q = emb(query)
    scored = [(float(q @ emb(r)), r) for r in reference
              if not (exclude and (r.key == query.key or (query.place_id is not None and r.place_id == query.place_id)))]
    top = sorted(scored, key=lambda t: -t[0])[:k]
    logits = [s / temperature for s, _ in top]
    z = sum(math.exp(v - max(logits)) for v in logits)
    w = [math.exp(v - max(logits)) / z for v in logits]
    near = [[float(haversine_km(a.lat, a.lon, b.lat, b.lon)) <= radius_km for _, b in top] for _, a in top]
    score = [sum(w[j] for j in range(len(top)) if near[i][j]) for i in range(len(top))]
    win = score.index(max(score))
    members = [j for j in range(len(top)) if near[win][j]]
    lat, lon = spherical_mean([top[j][1].lat for j in members], [top[j][1].lon for j in members], [w[j] for j in members])
    return lat, lon, score[win], top[0][1].key


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("geo") / "world"
    make_geo_world(root)
    return root


@pytest.mark.parametrize("split, k, radius_km, temperature", [("test", 5, 25.0, 0.05), ("test", 30, 1.0, 0.5), ("train", 4, 25.0, 0.02)])
def test_matches_a_naive_reference(world: Path, split: str, k: int, radius_km: float, temperature: float) -> None:
    module = tiny_module().eval()
    reference = list(read_synthcities_geo(world, "train"))
    queries = list(read_synthcities_geo(world, split))[:9]
    geo = RetrievalGeolocator.from_module(module, reference, k=k, radius_km=radius_km, temperature=temperature, batch_size=4)
    preds = geo.predict(queries)
    assert [p.key for p in preds] == [q.key for q in queries] and all(p.ok for p in preds)
    for q, p in zip(queries, preds):
        lat, lon, conf, top_key = _naive(module, reference, q, k, radius_km, temperature, exclude=True)
        assert p.lat == pytest.approx(lat, abs=1e-4) and p.lon == pytest.approx(lon, abs=1e-4)
        assert p.confidence == pytest.approx(conf, abs=1e-4) and p.extra["top_key"] == top_key


def test_exclude_same_place_locates_the_reference_split_without_leaking(world: Path) -> None:
    module = tiny_module().eval()
    reference = list(read_synthcities_geo(world, "train"))
    place_of = {s.key: s.place_id for s in reference}
    leaky = RetrievalGeolocator.from_module(module, reference, exclude_same_place=False).predict(reference)
    assert all(p.extra["top_key"] == p.key and p.extra["top_sim"] == pytest.approx(1.0, abs=1e-4) for p in leaky)
    fair = RetrievalGeolocator.from_module(module, reference, exclude_same_place=True).predict(reference)
    assert all(place_of[p.extra["top_key"]] != place_of[p.key] for p in fair)


def test_a_query_that_is_a_reference_image_reuses_its_embedding_unless_its_bytes_differ(world: Path) -> None:
    module = tiny_module().eval()
    reference = list(read_synthcities_geo(world, "train"))
    encoded: list[int] = []
    encode = module.encode_images
    module.encode_images = lambda x: (encoded.append(x.shape[0]), encode(x))[1]  # type: ignore[method-assign]
    geo = RetrievalGeolocator.from_module(module, reference, batch_size=5)
    first = geo.predict(reference)
    assert sum(encoded) == len(reference)  # the reference once, the queries not again
    # another world's image under the same key is not this reference image: it is encoded
    other = dataclasses.replace(reference[0], image_bytes=reference[1].image_data())
    again = geo.predict([other])
    assert sum(encoded) == len(reference) + 1
    assert again[0].extra["top_key"] != first[0].extra["top_key"] or again[0].extra["top_sim"] != first[0].extra["top_sim"]


def test_identical_embeddings_give_the_majority_region_not_a_crash() -> None:
    # three images around one city, two around another 1,000 km away, every embedding the same
    reference = [colour_sample(f"x{i}", 10.0 + 0.01 * i, 10.0, RED) for i in range(3)]
    reference += [colour_sample(f"y{i}", 19.0 + 0.01 * i, 10.0, BLUE) for i in range(2)]
    everyone = RetrievalGeolocator.from_module(ColourEncoder(constant=True), reference, k=10, temperature=0.05)
    [p] = everyone.predict([colour_sample("q", 0.0, 0.0, BLUE)])
    assert p.confidence == pytest.approx(3 / 5) and p.extra["cluster_size"] == 3
    assert (p.lat, p.lon) == pytest.approx(spherical_mean([10.0, 10.01, 10.02], [10.0] * 3))
    # fewer neighbours than images: whichever tied neighbours come first vote; a valid answer either way
    some = RetrievalGeolocator.from_module(ColourEncoder(constant=True), reference, k=2).predict([colour_sample("q", 0.0, 0.0, BLUE)] * 3)
    assert all(p.ok and 0.5 <= p.confidence <= 1.0 and p.lat in (pytest.approx(10.0, abs=0.1), pytest.approx(19.0, abs=0.1)) for p in some)


def test_bad_images_fail_their_prediction_and_are_counted() -> None:
    reference = _three_point_reference() + [GeoSample(key="broken", lat=1.0, lon=1.0, image_bytes=b"not a jpeg")]
    geo = RetrievalGeolocator.from_module(ColourEncoder(), reference, k=3, batch_size=2)
    queries = [colour_sample("q1", 0, 0, RED), GeoSample(key="q2", lat=0.0, lon=0.0, image_bytes=b"\xff\xd8 truncated"),
               GeoSample(key="q3", lat=0.0, lon=0.0), colour_sample("q4", 0, 0, ORANGE)]
    preds = geo.predict(queries)
    assert [p.key for p in preds] == ["q1", "q2", "q3", "q4"]
    assert [p.ok for p in preds] == [True, False, False, True] and preds[1].error == preds[2].error == BAD_IMAGE
    assert geo.stats[BAD_IMAGE] == 2 and geo.stats["reference_bad_image"] == 1
    assert "broken" not in geo.reference().keys


def test_a_query_whose_every_neighbour_is_excluded_fails() -> None:
    geo = RetrievalGeolocator.from_module(ColourEncoder(), [colour_sample("A", 1.0, 1.0, RED, place_id=7)])
    preds = geo.predict([colour_sample("q", 0, 0, RED, place_id=7), colour_sample("A", 1.0, 1.0, RED)])
    assert [(p.ok, p.error) for p in preds] == [(False, NO_NEIGHBOURS)] * 2 and geo.stats[NO_NEIGHBOURS] == 2
    empty = RetrievalGeolocator.from_module(ColourEncoder(), [])
    assert [(p.ok, p.error) for p in empty.predict([colour_sample("q", 0, 0, RED)])] == [(False, NO_NEIGHBOURS)]


@pytest.mark.parametrize("field, value", [("k", 0), ("batch_size", 0), ("radius_km", 0.0), ("temperature", -1.0)])
def test_bad_settings_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"RetrievalGeolocator\.{field}"):
        RetrievalGeolocator.from_module(ColourEncoder(), [], **{field: value})


def test_constructor_checks_paths_and_loads_lazily(world: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="retriever: no checkpoint"):
        RetrievalGeolocator(retriever=str(tmp_path / "missing.ckpt"), reference=str(world))
    (tmp_path / "x.ckpt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="reference: no manifest.json"):
        RetrievalGeolocator(retriever=str(tmp_path / "x.ckpt"), reference=str(tmp_path))
    geo = RetrievalGeolocator(retriever=str(tmp_path / "x.ckpt"), reference=str(world))  # nothing is loaded yet
    assert geo._module is None and geo._reference is None


# ---- GeoCLIP -------------------------------------------------------------------------------------

GALLERY = torch.tensor([[48.86, 2.35], [40.71, -74.0], [35.68, 139.69], [-33.87, 151.21], [51.51, -0.13]])
#: The fake's location features: gallery point i has colour COLOURS[i]; an image of that colour matches it best.
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


class _FakeImageEncoder(nn.Module):
    def preprocess_image(self, images: list) -> torch.Tensor:
        return torch.stack([torch.tensor(np.asarray(im.resize((4, 4)), dtype=np.float32) / 255.0).permute(2, 0, 1) for im in images])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class FakeGeoCLIP(nn.Module):
    """Duck-typed GeoCLIP: ``image_encoder.preprocess_image``, ``gps_gallery``, ``forward(images, gps) -> logits``."""

    loaded_from: list = []

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = _FakeImageEncoder()
        self.register_buffer("gps_gallery", GALLERY.clone())
        self.register_buffer("location_features", F.normalize(torch.tensor(COLOURS, dtype=torch.float32), dim=-1))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    @classmethod
    def from_pretrained(cls, path: str, local_files_only: bool = False) -> "FakeGeoCLIP":
        if path == "missing":
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        cls.loaded_from.append((path, local_files_only))
        return cls()

    def forward(self, image: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        assert torch.equal(location, self.gps_gallery)
        return self.logit_scale.exp() * F.normalize(self.image_encoder(image), dim=-1) @ self.location_features.T


@pytest.fixture
def fake_geoclip(monkeypatch):
    module = types.ModuleType("geoclip")
    module.GeoCLIP = FakeGeoCLIP
    monkeypatch.setitem(sys.modules, "geoclip", module)
    return module


def test_geoclip_top1_gps_and_probability(fake_geoclip) -> None:
    samples = [colour_sample("tokyo", 35.0, 139.0, (0, 0, 255)), GeoSample(key="bad", lat=0.0, lon=0.0, image_bytes=b"xx"),
               colour_sample("paris", 48.0, 2.0, (255, 0, 0))]
    geo = GeoCLIPPredictor(weights="some/release", gazetteer=None, batch_size=2, top_k=2)
    assert isinstance(geo, GeoPredictor)
    preds = geo.predict(samples)
    assert FakeGeoCLIP.loaded_from[-1] == ("some/release", True)
    assert [p.key for p in preds] == ["tokyo", "bad", "paris"] and [p.ok for p in preds] == [True, False, True]
    assert preds[1].error == BAD_IMAGE and geo.stats[BAD_IMAGE] == 1
    tokyo = preds[0]
    assert (tokyo.lat, tokyo.lon) == (pytest.approx(35.68), pytest.approx(139.69))
    # blue against the five colours at logit scale 10: cosine 1 (blue), 1/sqrt(2) (cyan), 0 (red, green, yellow)
    sims = np.array([0.0, 0.0, 1.0, 0.0, 1 / math.sqrt(2)])
    p = np.exp(10 * sims) / np.exp(10 * sims).sum()
    assert tokyo.confidence == pytest.approx(p[2], rel=1e-5)
    assert np.allclose([c[:2] for c in tokyo.extra["top_k"]], [[35.68, 139.69], [51.51, -0.13]], atol=1e-5)
    assert tokyo.extra["top_k"][1][2] == pytest.approx(p[4], rel=1e-4)
    assert (preds[2].lat, preds[2].lon) == (pytest.approx(48.86), pytest.approx(2.35))


def test_geoclip_names_coordinates_with_a_gazetteer(fake_geoclip, monkeypatch) -> None:
    monkeypatch.setattr("dlgpr.geo.geolocator.load_gazetteer", lambda kind: WORLD if kind == "world-test" else None)
    [p] = GeoCLIPPredictor(gazetteer="world-test").predict([colour_sample("q", 0, 0, (255, 0, 0))])  # GeoCLIP() path
    assert (p.lat, p.lon, p.city, p.country) == (pytest.approx(48.86), pytest.approx(2.35), "Aurelia", "Valdoria")


def test_geoclip_missing_package_and_weights_are_one_line_errors(fake_geoclip, monkeypatch) -> None:
    with pytest.raises(RuntimeError, match=r"GeoCLIP weights not available \(missing: OSError\)") as err:
        GeoCLIPPredictor(weights="missing", gazetteer=None).predict([colour_sample("q", 0, 0, RED)])
    assert "\n" not in str(err.value) and "huggingface.co" not in str(err.value)
    monkeypatch.setitem(sys.modules, "geoclip", None)  # what an absent package looks like to import
    with pytest.raises(ImportError, match="pip install geoclip"):
        GeoCLIPPredictor(gazetteer=None).predict([colour_sample("q", 0, 0, RED)])
    with pytest.raises(ValueError, match=r"GeoCLIPPredictor\.top_k"):
        GeoCLIPPredictor(top_k=0)

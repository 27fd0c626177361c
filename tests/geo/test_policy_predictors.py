"""The policy as a geo predictor and the hybrid (policy's city -> retrieval inside it) on hand-built galleries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pytest
import torch

from dlgpr.data.geo import GeoSample
from dlgpr.geo.gazetteer import WorldGazetteer
from dlgpr.geo.geolocator import RetrievalGeolocator
from dlgpr.geo.policy import HybridGeoPredictor, PolicyGeoPredictor
from dlgpr.geo.predict import GeoPrediction, GeoPredictor
from dlgpr.models.questioner import GEO_FORMAT_TAGS, ImagePolicyConfig, PolicyConfig, ScratchLMConfig, export_policy, load_policy, train_corpus_tokenizer
from tests.helpers.geo import ColourEncoder, colour_sample

RED, ORANGE, BLUE = (255, 0, 0), (255, 128, 0), (0, 0, 255)
# two cities 111 km apart
WORLD = WorldGazetteer.from_manifest({
    "cities": [{"name": "Aurelia", "lat": 0.0, "lon": 0.0, "country": "XA"}, {"name": "Borgo", "lat": 1.0, "lon": 0.0, "country": "XA"}],
    "countries": [{"code": "XA", "name": "Valdoria", "lat": 0.5, "lon": 0.0}],
})


def gallery() -> list[GeoSample]:
    """Aurelia holds an orange image 2 km north of the centre and a blue one; Borgo a red one."""
    return [colour_sample("aur-orange", 0.018, 0.0, ORANGE, place_id=1), colour_sample("aur-blue", 0.0, 0.01, BLUE, place_id=2),
            colour_sample("bor-red", 1.0, 0.0, RED, place_id=3)]


class Names:
    """A stand-in policy naming a fixed city per key (``""``: no answer)."""

    name = "names"

    def __init__(self, cities: dict[str, str]) -> None:
        self.cities = cities

    def predict(self, samples: Sequence[GeoSample]) -> list[GeoPrediction]:
        return [GeoPrediction(key=s.key, city=self.cities[s.key], country="Valdoria") if self.cities[s.key]
                else GeoPrediction.failed(s.key, "no_answer_tag") for s in samples]


def hybrid(cities: dict[str, str]) -> HybridGeoPredictor:
    geo = RetrievalGeolocator.from_module(ColourEncoder(), gallery(), gazetteer=WORLD, k=3, temperature=1.0)
    return HybridGeoPredictor(Names(cities), geo, gazetteer=WORLD, radius_km=25.0)


def test_hybrid_takes_the_nearest_image_inside_the_policys_city() -> None:
    # a red query: over the whole gallery Borgo's red image is nearest; the policy says Aurelia, where
    # the orange image is closer to red than the blue one
    h = hybrid({"q": "Aurelia"})
    [p] = h.predict([colour_sample("q", 0.0, 0.0, RED, place_id=9)])
    assert isinstance(h, GeoPredictor)
    assert (p.lat, p.lon, p.extra["top_key"]) == (0.018, 0.0, "aur-orange")
    assert (p.city, p.country) == ("Aurelia", "Valdoria")
    assert h.stats["narrowed"] == 1


def test_hybrid_falls_back_to_full_retrieval_without_a_city() -> None:
    h = hybrid({"q": ""})
    [p] = h.predict([colour_sample("q", 0.0, 0.0, RED, place_id=9)])
    [full] = RetrievalGeolocator.from_module(ColourEncoder(), gallery(), gazetteer=WORLD, k=3, temperature=1.0).predict(
        [colour_sample("q", 0.0, 0.0, RED, place_id=9)])
    assert (p.lat, p.lon) == (full.lat, full.lon)
    assert h.stats["no_city"] == 1


def test_hybrid_leaves_out_the_querys_own_place() -> None:
    # the query is Aurelia's orange place itself: its own images are not candidates, the blue one is
    h = hybrid({"q": "Aurelia"})
    [p] = h.predict([colour_sample("q", 0.018, 0.0, ORANGE, place_id=1)])
    assert p.extra["top_key"] == "aur-blue"


def test_policy_predictor_answers_every_sample_in_order(tmp_path: Path) -> None:
    tok = train_corpus_tokenizer(["<think>red door</think><answer>Borgo, Valdoria</answer>"] * 10, vocab_size=300, tags=GEO_FORMAT_TAGS)
    tok.save_pretrained(str(tmp_path / "tok"))
    cfg = ImagePolicyConfig(tower_model="dlgpr-tiny", tower_pretrained=None, image_tokens=2,
                            decoder=ScratchLMConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64))
    torch.manual_seed(0)
    model, processor = load_policy(PolicyConfig(model=str(tmp_path / "tok"), image=cfg))
    export_policy(model, processor, tmp_path / "policy", PolicyConfig(model=str(tmp_path / "tok"), image=cfg))
    pred = PolicyGeoPredictor(str(tmp_path / "policy"), batch_size=2, max_new_tokens=6, device="cpu")
    s = [colour_sample(k, 0.0, 0.0, RED, size=32) for k in ("x", "y", "z")]
    out = pred.predict(s)
    assert [p.key for p in out] == ["x", "y", "z"]
    assert all(p.raw is not None for p in out)  # every reply is kept for audits, parsed or not


def test_ablation_eval_config_parses_and_instantiates(tmp_path, monkeypatch) -> None:
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    # a fresh clone has no trained retriever and no geo world: the geolocator only checks that
    # its files exist when it is built (nothing is loaded until the first prediction)
    monkeypatch.chdir(tmp_path)
    for placeholder in ("lightning_logs/version_0/checkpoints/last.ckpt", "data/synthcities-geo/manifest.json"):
        (tmp_path / placeholder).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / placeholder).write_bytes(b"")
    spec = importlib.util.spec_from_file_location("evaluate_geo", root / "scripts" / "evaluate_geo.py")
    evaluate_geo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_geo)  # type: ignore[union-attr]
    parser = evaluate_geo.build_parser()
    cfg = parser.parse_args(["--config", str(root / "configs" / "eval" / "geo_globe_ablation.yaml")])
    methods = parser.instantiate_classes(cfg).methods  # nothing is loaded until the first prediction
    names = [m.name for m in methods]
    assert len(set(names)) == len(names) == 8
    assert [type(m).__name__ for m in methods].count("PolicyGeoPredictor") == 5
    hybrid, wide = methods[-2:]
    assert isinstance(hybrid, HybridGeoPredictor) and isinstance(hybrid.policy, PolicyGeoPredictor)
    assert hybrid.policy.policy == "lightning_logs/globe/grpo_full/policy"
    # the wider hybrid reads GRPO full's stored answers (where evaluate_geo writes that row's file)
    from dlgpr.geo.predict import StoredGeoPredictor

    assert isinstance(wide, HybridGeoPredictor) and wide.nearest_cities == 3 and isinstance(wide.policy, StoredGeoPredictor)
    grpo_full = next(m for m in methods if m.name == "GRPO full")
    assert wide.policy.path.name == evaluate_geo.slug(grpo_full.name) + ".jsonl"
    assert isinstance(wide.policy.fallback, PolicyGeoPredictor) and wide.policy.fallback.policy == grpo_full.policy


def test_hybrid_with_the_nearest_cities_widens_the_gallery_to_the_neighbours() -> None:
    # a red query, the policy says Aurelia: alone, Aurelia's orange image answers; with the nearest
    # other city (Borgo, 111 km) in the gallery too, Borgo's red image does
    q = colour_sample("q", 0.0, 0.0, RED, place_id=9)
    geo = RetrievalGeolocator.from_module(ColourEncoder(), gallery(), gazetteer=WORLD, k=3, temperature=1.0)
    one = HybridGeoPredictor(Names({"q": "Aurelia"}), geo, gazetteer=WORLD, radius_km=25.0, nearest_cities=1)
    two = HybridGeoPredictor(Names({"q": "Aurelia"}), geo, gazetteer=WORLD, radius_km=25.0, nearest_cities=2)
    assert one.predict([q])[0].extra["top_key"] == "aur-orange"
    [p] = two.predict([q])
    assert p.extra["top_key"] == "bor-red" and (p.lat, p.lon) == (1.0, 0.0)
    assert two.stats["narrowed"] == 1


def test_gazetteer_nearest_cities_by_great_circle() -> None:
    from dlgpr.geo.distance import haversine_km

    g = WorldGazetteer.from_manifest({"cities": [{"name": "A", "lat": 0.0, "lon": 0.0}, {"name": "B", "lat": 0.0, "lon": 3.0},
                                                 {"name": "C", "lat": 2.0, "lon": 0.0}]})
    near = g.nearest_cities(0.1, 0.0, 2)
    assert [m.city for m in near] == ["A", "C"]
    assert near[1].distance_km == pytest.approx(float(haversine_km(0.1, 0.0, 2.0, 0.0)))
    assert [m.city for m in g.nearest_cities(0.0, 2.9, 10)] == ["B", "A", "C"]  # k beyond the table: all of it
    with pytest.raises(ValueError, match="k must be >= 1"):
        g.nearest_cities(0.0, 0.0, 0)


def test_stored_predictions_are_read_back_and_only_the_missing_asked(tmp_path: Path) -> None:
    from dlgpr.geo.predict import StoredGeoPredictor

    path = tmp_path / "grpo-full.jsonl"
    path.write_text(json.dumps(GeoPrediction(key="a", city="Aurelia", country="Valdoria").to_dict()) + "\n"
                    + json.dumps(GeoPrediction.failed("b", "no_answer_tag").to_dict()) + "\n" + '{"key": "c", "ok": tr\n')
    asked: list[str] = []

    class Fallback(Names):
        def predict(self, samples):
            asked.extend(s.key for s in samples)
            return super().predict(samples)

    samples = [colour_sample(k, 0.0, 0.0, RED) for k in ("a", "b", "c")]
    out = StoredGeoPredictor(str(path), fallback=Fallback({"c": "Borgo"})).predict(samples)
    assert [(p.key, p.ok, p.city) for p in out] == [("a", True, "Aurelia"), ("b", False, ""), ("c", True, "Borgo")]
    assert asked == ["c"]  # the torn line's sample only
    alone = StoredGeoPredictor(str(path)).predict(samples)
    assert alone[2].error == "not_stored"
    with pytest.raises(FileNotFoundError, match="no stored predictions"):
        StoredGeoPredictor(str(tmp_path / "none.jsonl")).predict(samples)
    # as the hybrid's city source
    geo = RetrievalGeolocator.from_module(ColourEncoder(), gallery(), gazetteer=WORLD, k=3, temperature=1.0)
    [p] = HybridGeoPredictor(StoredGeoPredictor(str(path)), geo, gazetteer=WORLD).predict([colour_sample("a", 0.0, 0.0, RED, place_id=9)])
    assert p.extra["top_key"] == "aur-orange"

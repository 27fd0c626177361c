"""SynthCities: determinism, text constraints, regions, splits, style priors, captions, reuse."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from dlgpr.data.schema import PlaceRecord
from dlgpr.data.shards import iter_tar_members, read_manifest
from dlgpr.data.synth import SLOTS, SynthCitiesConfig, ensure_synthcities, generate_synthcities
from dlgpr.data.synth import world as world_module
from dlgpr.data.synth.generate import make_world, world_captions
from dlgpr.data.synth.world import city_names, max_cities
from tests.helpers.scripts import load_script

SMALL = SynthCitiesConfig(num_cities=3, places_per_city=12, views_per_place=2, max_samples_per_shard=10, num_workers=0)
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
TRANSIENT = re.compile(r"\b(cars?|vehicles?|vans?|trucks?|bus(es)?|traffic|pedestrians?|persons?|people|men|man|"
                       r"women|woman|child(ren)?|passers?-by|bicycles?|bikes?|cyclists?|riders?|drivers?)\b", re.I)
# Slots whose (non-"none") value is stated literally in every description.
LITERAL_SLOTS = ("facade_color", "material", "window_style", "shutters", "trim_color", "roof", "shop_sign",
                 "sign_color", "awning", "awning_pattern", "door_color", "balcony", "flower_boxes",
                 "phone_booth_color", "sidewalk", "house_number")
ABSENT_NOUNS = {"shutters": "shutters", "shop_sign": "shop sign", "awning": "awning", "balcony": "balcony",
                "flower_boxes": "flower boxes", "phone_booth": "phone booth", "bench": "bench",
                "street_lamp": "street lamp", "tree": "tree"}


def _has_word(text: str, word: object) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(str(word))}(?!\w)", text, re.I) is not None


def _read_records(data_dir: Path) -> list[tuple[PlaceRecord, bytes]]:
    out = []
    for shard in read_manifest(data_dir).shards:
        members = dict(iter_tar_members(data_dir / shard.path))
        for name, data in members.items():
            if name.endswith(".json"):
                out.append((PlaceRecord.from_json(data), members[name[:-5] + ".jpg"]))
    return out


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "world"
    generate_synthcities(SMALL, out)
    return out


@pytest.fixture(scope="module")
def records(small_world: Path) -> list[tuple[PlaceRecord, bytes]]:
    return _read_records(small_world)


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_byte_identical_and_independent_of_workers(small_world: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    parallel = tmp_path / "parallel"
    generate_synthcities(SMALL, again)
    generate_synthcities(dataclasses.replace(SMALL, num_workers=2), parallel)
    reference = _file_bytes(small_world)
    assert len(reference) > 2  # several shards and the manifest
    assert _file_bytes(again) == reference
    assert _file_bytes(parallel) == reference
    other_seed = tmp_path / "other"
    generate_synthcities(dataclasses.replace(SMALL, seed=1), other_seed)
    assert _file_bytes(other_seed) != reference


def test_records_cover_the_world(records: list[tuple[PlaceRecord, bytes]], small_world: Path) -> None:
    n = SMALL.num_cities * SMALL.places_per_city * SMALL.views_per_place
    assert len(records) == n
    assert len({r.key for r, _ in records}) == n
    for rec, jpeg in records:
        city_index, place_in_city = divmod(rec.place_id, 10**5)
        assert rec.key == f"{rec.city}_{place_in_city:07d}_{rec.view}"
        assert city_index < SMALL.num_cities and place_in_city < SMALL.places_per_city
        assert set(rec.attributes) == set(SLOTS)
        image = Image.open(io.BytesIO(jpeg))
        assert image.size == (SMALL.image_size, SMALL.image_size) and image.mode == "RGB"
    manifest = read_manifest(small_world)
    assert manifest.extra["generator"] == "synthcities"
    assert manifest.extra["config"]["num_cities"] == SMALL.num_cities


def test_descriptions_length_and_no_transients(records: list[tuple[PlaceRecord, bytes]]) -> None:
    for rec, _ in records:
        n_words = len(rec.description.split())
        assert 100 <= n_words <= 200, (n_words, rec.description)
        assert TRANSIENT.search(rec.description) is None, rec.description
        assert TRANSIENT.search(rec.initial_caption) is None, rec.initial_caption


def test_descriptions_state_every_attribute(records: list[tuple[PlaceRecord, bytes]]) -> None:
    for rec, _ in records:
        a, text = rec.attributes, rec.description
        for slot in LITERAL_SLOTS:
            if a[slot] != "none":
                assert _has_word(text, a[slot]), (slot, a[slot], text)
        assert _has_word(text, NUMBER_WORDS[a["floors"]]) and _has_word(text, NUMBER_WORDS[a["windows_per_floor"]])
        for slot in ("phone_booth", "bench", "street_lamp", "tree"):
            if a[slot] != "none":
                assert _has_word(text, a[slot]), (slot, text)
        door_words = {"left": ("left",), "right": ("right",), "center": ("middle", "centre")}[a["door_position"]]
        assert any(_has_word(text, w) for w in door_words), text
        for slot, noun in ABSENT_NOUNS.items():
            if a[slot] == "none":
                assert re.search(rf"\bno\b[^.]*\b{noun}\b|\bany\b[^.]*\b{noun}\b", text), (slot, text)


def test_views_are_paraphrases_of_the_same_place(records: list[tuple[PlaceRecord, bytes]]) -> None:
    by_place: dict[int, list[PlaceRecord]] = defaultdict(list)
    for rec, _ in records:
        by_place[rec.place_id].append(rec)
    for views in by_place.values():
        assert len(views) == SMALL.views_per_place
        assert len({v.description for v in views}) == len(views)
        assert all(v.attributes == views[0].attributes for v in views)
        assert len({v.initial_caption for v in views}) == 1
        assert len({(v.lat, v.lon, v.split) for v in views}) == 1


def test_regions_are_clipped_boxes(records: list[tuple[PlaceRecord, bytes]]) -> None:
    phrases = set()
    for rec, _ in records:
        assert rec.regions, rec.key
        for region in rec.regions:
            x0, y0, x1, y1 = region.box
            assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
            assert "none" not in region.phrase.split()
            phrases.add(region.phrase)
        door = [r for r in rec.regions if r.phrase == f"the {rec.attributes['door_color']} door"]
        assert door, rec.regions  # the door is always in frame
    assert any("phone booth" in p for p in phrases) and any("awning" in p for p in phrases)


def test_splits_are_disjoint_by_place_and_follow_fractions(records: list[tuple[PlaceRecord, bytes]]) -> None:
    split_of: dict[int, set[str]] = defaultdict(set)
    for rec, _ in records:
        split_of[rec.place_id].add(rec.split)
    assert all(len(s) == 1 for s in split_of.values())
    assert len(split_of) == SMALL.num_cities * SMALL.places_per_city
    world = make_world(SynthCitiesConfig(num_cities=4, places_per_city=250))
    for city in world.cities:
        places = [p for p in world.places if p.city == city.name]
        for split, fraction in zip(("train", "val", "test"), (0.8, 0.1, 0.1)):
            assert abs(sum(p.split == split for p in places) / len(places) - fraction) < 0.01


def test_places_are_unique_and_cities_have_a_style() -> None:
    world = make_world(SynthCitiesConfig(num_cities=5, places_per_city=400))
    signatures = {json.dumps(p.attributes, sort_keys=True) for p in world.places}
    assert len(signatures) == len(world.places)
    sample = world.places[::8]  # 50 places per city

    def shared(a: dict, b: dict) -> int:
        return sum(a[k] == b[k] for k in SLOTS)

    same, cross = [], []
    for p, q in itertools.combinations(sample, 2):
        (same if p.city == q.city else cross).append(shared(p.attributes, q.attributes))
    assert sum(same) / len(same) > sum(cross) / len(cross) + 1.0


def test_first_city_gives_other_cities_and_place_ids() -> None:
    default = make_world(SynthCitiesConfig(num_cities=3, places_per_city=20))
    other = make_world(SynthCitiesConfig(num_cities=3, places_per_city=20, first_city=5, seed=1))
    assert {c.name for c in default.cities}.isdisjoint({c.name for c in other.cities})
    assert {p.place_id for p in default.places}.isdisjoint({p.place_id for p in other.places})
    assert [c.index for c in other.cities] == [5, 6, 7]
    assert [c.name for c in other.cities] == city_names(8)[5:]
    # a city is the same whichever world it starts: same name, centre and style for the same seed
    shifted = make_world(SynthCitiesConfig(num_cities=2, places_per_city=20, first_city=1))
    assert shifted.cities[0] == default.cities[1] and shifted.places[0] == default.places[20]
    with pytest.raises(ValueError, match="first_city"):
        SynthCitiesConfig(num_cities=5, first_city=max_cities() - 4)


def test_attribute_collisions_are_redrawn(monkeypatch: pytest.MonkeyPatch) -> None:
    real = world_module.sample_attributes
    calls: list[dict] = []

    def every_other_call_repeats_the_first(rng, city):  # type: ignore[no-untyped-def]
        attrs = real(rng, city)
        calls.append(attrs)
        return calls[0] if len(calls) % 2 else attrs

    monkeypatch.setattr(world_module, "sample_attributes", every_other_call_repeats_the_first)
    world = world_module.build_world(2, 10, (0.8, 0.1, 0.1), seed=0)
    assert len({json.dumps(p.attributes, sort_keys=True) for p in world.places}) == 20
    assert len(calls) > 20  # collisions happened and were redrawn


def test_caption_error_rate() -> None:
    config = SynthCitiesConfig(num_cities=5, places_per_city=400)
    world, captions = world_captions(config)
    assert len(captions) == 2000
    wrong = 0
    for place in world.places:
        cap = captions[place.place_id]
        assert 1 <= len(cap.stated) <= 2 and len(cap.text.split()) <= 20
        mismatched = [s for s, v in cap.stated.items() if v != place.attributes[s]]
        assert mismatched == ([cap.wrong_slot] if cap.wrong_slot else [])
        wrong += cap.wrong_slot is not None
    assert abs(wrong / len(captions) - 0.2) < 0.05
    _, exact = world_captions(dataclasses.replace(config, caption_error_rate=0.0))
    assert all(c.wrong_slot is None for c in exact.values())
    # The error coin does not change which slots a caption mentions.
    assert all(exact[k].stated.keys() == captions[k].stated.keys() for k in captions)


def test_caption_attributes_is_a_world_setting() -> None:
    config = SynthCitiesConfig(num_cities=2, places_per_city=50)
    _, default = world_captions(config)
    assert {len(c.stated) for c in default.values()} == {1, 2}  # the default vagueness
    _, detailed = world_captions(dataclasses.replace(config, caption_attributes=(3, 3)))
    assert all(len(c.stated) == 3 for c in detailed.values())
    assert "caption_attributes" not in config.output_signature()  # worlds made before the setting existed are reused
    assert dataclasses.replace(config, caption_attributes=(2, 3)).output_signature()["caption_attributes"] == [2, 3]


@pytest.mark.parametrize("field, value", [
    ("num_cities", 0), ("places_per_city", 10**5), ("views_per_place", 0), ("image_size", 16),
    ("caption_error_rate", 1.5), ("distractor_rate", -1.0), ("occlusion_prob", 2.0),
    ("occlusion_max_fraction", 0.0), ("split_fractions", (0.5, 0.3, 0.3)), ("seed", -1),
    ("max_samples_per_shard", 0), ("jpeg_quality", 100), ("num_workers", -1), ("first_city", -1),
    ("caption_attributes", (0, 2)), ("caption_attributes", (3, 2)),
])
def test_config_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SynthCitiesConfig(**{field: value})


def test_ensure_reuses_and_regenerates(tmp_path: Path) -> None:
    out = tmp_path / "synthcities"
    config = dataclasses.replace(SMALL, num_cities=2, places_per_city=5)
    first = ensure_synthcities(out, config)
    manifest_file = out / "manifest.json"
    stamp = manifest_file.stat().st_mtime_ns
    again = ensure_synthcities(out, dataclasses.replace(config, num_workers=2))  # output-neutral change
    assert again.to_json() == first.to_json() and manifest_file.stat().st_mtime_ns == stamp
    changed = ensure_synthcities(out, dataclasses.replace(config, seed=7))
    assert changed.extra["config"]["seed"] == 7 and read_manifest(out).extra["config"]["seed"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthcities"]  # no temp or old directories left
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        ensure_synthcities(foreign, config)
    with pytest.raises(FileExistsError):
        generate_synthcities(config, out)


def test_make_synthcities_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = load_script("make_synthcities")
    module.main(["--out_dir", str(tmp_path / "w"), "--num_cities", "2", "--places_per_city", "4",
                 "--views_per_place", "1", "--num_workers", "0", "--split_fractions", "[0.5, 0.25, 0.25]"])
    assert "8 images" in capsys.readouterr().out
    assert read_manifest(tmp_path / "w").extra["config"]["split_fractions"] == [0.5, 0.25, 0.25]

import json

import pytest

from dlgpr.data.schema import SCHEMA_VERSION, PlaceRecord, RecordError, Region, make_key


def _record(**kw):
    base = dict(
        key=make_key("Aurelia", 12, 3), place_id=12, city="Aurelia", lat=41.9, lon=12.5, view=3,
        initial_caption="a yellow bakery", description="A yellow stucco building with a bakery sign.",
        split="train", regions=(Region("the bakery sign", (0.2, 0.1, 0.6, 0.3)),),
        attributes={"facade_color": "yellow", "floors": 3},
    )
    base.update(kw)
    return PlaceRecord(**base)


def test_round_trip_is_exact():
    rec = _record()
    again = PlaceRecord.from_json(rec.to_json())
    assert again == rec
    assert again.to_json() == rec.to_json()
    assert json.loads(rec.to_json())["schema_version"] == SCHEMA_VERSION
    assert rec.key == "Aurelia_0000012_3"


@pytest.mark.parametrize("field", ["place_id", "description", "split", "lat"])
def test_missing_field_is_named(field):
    d = json.loads(_record().to_json())
    del d[field]
    with pytest.raises(RecordError, match=field):
        PlaceRecord.from_json(json.dumps(d))


@pytest.mark.parametrize(
    "kw, field",
    [({"description": "   "}, "description"), ({"split": "dev"}, "split"), ({"place_id": -1}, "place_id"), ({"lat": float("nan")}, "lat")],
)
def test_invalid_values_rejected(kw, field):
    with pytest.raises(RecordError, match=field):
        _record(**kw)


def test_region_box_validated():
    with pytest.raises(RecordError, match="box"):
        Region("x", (0.5, 0.1, 0.4, 0.3))
    with pytest.raises(RecordError):
        Region("", (0.1, 0.1, 0.4, 0.3))


def test_newer_major_schema_refused_and_garbage_rejected():
    d = json.loads(_record().to_json())
    d["schema_version"] = "2.0"
    with pytest.raises(RecordError, match="schema_version"):
        PlaceRecord.from_json(json.dumps(d))
    with pytest.raises(RecordError, match="parse"):
        PlaceRecord.from_json(b"{not json")


def test_key_rejects_separator_in_city():
    with pytest.raises(RecordError):
        make_key("Los_Angeles", 1, 0)

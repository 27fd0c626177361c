"""Render the SynthCities overview figure and page: ``docs/synthcities_grid.png`` and ``docs/SYNTHCITIES.md``.

    python scripts/render_synthcities_grid.py            # writes into docs/

A small world (3 cities) is generated into a temporary directory; the figure shows 4 places
(two from the same city: hard negatives) x 4 views, the last column with the region boxes of
view 0, and each row is labelled with the place's initial caption and the start of its
description. The page is written from the same world, so its tables and example always match
the code.
"""

from __future__ import annotations

import io
import json
import tempfile
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as mpatches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from jsonargparse import CLI  # noqa: E402
from PIL import Image  # noqa: E402

from dlgpr.data.schema import PlaceRecord  # noqa: E402
from dlgpr.data.shards import iter_tar_members, read_manifest  # noqa: E402
from dlgpr.data.synth import SLOTS, SynthCitiesConfig, generate_synthcities  # noqa: E402
from dlgpr.data.synth.generate import make_world  # noqa: E402
from dlgpr.data.synth.text import MAX_WORDS, MIN_WORDS  # noqa: E402
from dlgpr.data.synth.world import DEPENDENT_SLOTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIGURE_CONFIG = SynthCitiesConfig(num_cities=3, places_per_city=8, views_per_place=4, num_workers=0)


def _load(data_dir: Path) -> dict[int, list[tuple[PlaceRecord, bytes]]]:
    """place_id -> [(record, jpeg)] in view order, over all splits."""
    by_place: dict[int, list[tuple[PlaceRecord, bytes]]] = {}
    for shard in read_manifest(data_dir).shards:
        members = dict(iter_tar_members(data_dir / shard.path))
        for name, data in members.items():
            if name.endswith(".json"):
                rec = PlaceRecord.from_json(data)
                by_place.setdefault(rec.place_id, []).append((rec, members[name[:-5] + ".jpg"]))
    return {pid: sorted(views, key=lambda rv: rv[0].view) for pid, views in sorted(by_place.items())}


def _pick_rows(by_place: dict[int, list[tuple[PlaceRecord, bytes]]]) -> list[int]:
    """Two places of city 0 (hard negatives) and one of each other city, preferring shop signs."""
    def first_with_sign(city_index: int, skip: tuple[int, ...] = ()) -> int:
        ids = [pid for pid in by_place if pid // 10**5 == city_index and pid not in skip]
        return next((pid for pid in ids if by_place[pid][0][0].attributes["shop_sign"] != "none"), ids[0])

    a = first_with_sign(0)
    return [a, first_with_sign(0, (a,)), first_with_sign(1), first_with_sign(2)]


def render_figure(by_place: dict[int, list[tuple[PlaceRecord, bytes]]], rows: list[int], path: Path) -> None:
    n_views = len(by_place[rows[0]])
    fig, axes = plt.subplots(len(rows), n_views + 2, figsize=(2.0 * (n_views + 1) + 4.4, 2.2 * len(rows)),
                             gridspec_kw={"width_ratios": [1] * (n_views + 1) + [2.2]})
    for r, pid in enumerate(rows):
        views = by_place[pid]
        for c in range(n_views + 1):
            ax = axes[r, c]
            rec, jpeg = views[c if c < n_views else 0]
            ax.imshow(Image.open(io.BytesIO(jpeg)), extent=(0, 1, 1, 0))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"view {c}" if c < n_views else "view 0 + regions", fontsize=9)
            if c == n_views:
                for region in rec.regions:
                    if "facade" not in region.phrase and "sidewalk" not in region.phrase:  # too large to help
                        x0, y0, x1, y1 = region.box
                        ax.add_patch(mpatches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.8, color="yellow"))
        rec = views[0][0]
        excerpt = " ".join(rec.description.split()[:38]) + " ..."
        label = (f"{rec.city} #{rec.place_id}\n\ncaption: \u201c{rec.initial_caption}\u201d\n\n"
                 + textwrap.fill(f"description (view 0): {excerpt}", 56))
        text_ax = axes[r, n_views + 1]
        text_ax.axis("off")
        text_ax.text(0.0, 0.5, label, fontsize=8.5, va="center", ha="left")
    fig.tight_layout(pad=0.4)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=80, format="png")
    plt.close(fig)
    # A 256-colour palette keeps the committed PNG small; the renders use few colours anyway.
    Image.open(buf).convert("RGB").quantize(colors=256, dither=Image.Dither.NONE).save(path, optimize=True)


def _slot_table() -> str:
    lines = ["| slot | values |", "|---|---|"]
    for slot, values in SLOTS.items():
        if slot == "house_number":
            shown = f"integers {values[0]}..{values[-1]}"
        elif all(isinstance(v, int) for v in values):
            shown = ", ".join(str(v) for v in values)
        else:
            shown = ", ".join(f"`{v}`" for v in values)
        if slot in DEPENDENT_SLOTS:
            shown += f" (`none` exactly when `{DEPENDENT_SLOTS[slot]}` is `none`)"
        lines.append(f"| `{slot}` | {shown} |")
    return "\n".join(lines)


def _style_table(config: SynthCitiesConfig) -> str:
    world = make_world(config)
    slots = ("facade_color", "material", "roof", "shop_sign", "phone_booth")
    lines = ["| city | " + " | ".join(f"`{s}`" for s in slots) + " |", "|---" * (len(slots) + 1) + "|"]
    for city in world.cities:
        cells = []
        for slot in slots:
            ranked = sorted(zip(SLOTS[slot], city.style[slot]), key=lambda vp: -vp[1])[:2]
            cells.append(", ".join(f"{v} {p:.0%}" for v, p in ranked))
        lines.append(f"| {city.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _record_json(record: PlaceRecord) -> str:
    """The record's JSON, indented, with one region per line so the page stays readable."""
    d = json.loads(record.to_json())
    lines = []
    for key, value in d.items():
        if key == "regions":
            inner = ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in value)
            lines.append(f' "regions": [\n{inner}\n ]')
        else:
            lines.append(f" {json.dumps(key)}: " + json.dumps(value, indent=1, ensure_ascii=False).replace("\n", "\n "))
    return "{\n" + ",\n".join(lines) + "\n}"


PAGE = """# SynthCities: the embedded street-view world

SynthCities is a deterministic procedural world written in exactly the DQ-Cities shard format
(`dlgpr/data/shards.py`, docs/METHOD.md "Data layouts"), so everything that reads SynthCities reads
real DQ-Cities unchanged. It exists because real DQ-Cities / GSV-Cities images and pretrained
weights cannot be fetched where this project is built and tested. Code: `dlgpr/data/synth/`.

![SynthCities: 4 places x 4 views](synthcities_grid.png)

Rows 1 and 2 are two places of the same city (hard negatives: the city style prior makes them
alike); rows 3 and 4 come from two other cities. The fifth column draws the region boxes of
view 0 (facade and sidewalk omitted).

## The world

- **Cities** (default 5: {city_names}) each have a centre (lat/lon) and a **style prior**: for every
  slot a skewed distribution over its values (a Dirichlet draw with concentration 0.4, mixed 80/20
  with the uniform distribution so that every value stays possible). Places of a city are drawn
  from its prior, so same-city places share many attribute values (hard negatives) while cities
  differ. House numbers are not styled. Most likely two values per city for a few slots
  (default seed):

{style_table}

- **Places** are flat dicts of static slots with exact values (`SLOTS` in
  `dlgpr/data/synth/world.py`); no two places of the world share the full dict (a collision is
  redrawn from the place's own seeded generator). Place ids are global, GSV-Cities style:
  `city_index * 10**5 + place_in_city`; coordinates scatter about 2 km around the city centre.
  Positions are as seen from the street; `phone_booth` is the side of the door,
  `bench` / `street_lamp` / `tree` the side of the facade.

{slot_table}

- **Splits** are by place, stratified per city (`split_fractions`, default 0.8/0.1/0.1): all
  views of a place are in one split.

## Images and regions

Each place is drawn once by PIL onto a canonical canvas twice the output size (sky, plain
neighbouring buildings, the facade with its material texture, roof, windows, shutters, trim,
balcony, flower boxes, shop front with a legible sign, awning, door and number plate, sidewalk,
bench, phone booth, tree, street lamp). A **view** (default 4 per place, 128x128) is a crop of
that canvas (camera shift and zoom), with its own lighting (brightness and colour temperature)
and **transient distractors** drawn in front: cars on the street, pedestrians and bicycles on
the sidewalk (Poisson, mean `distractor_rate`), and with probability `occlusion_prob` a vehicle
or passer-by right in front of the camera covering up to `occlusion_max_fraction` of the width.
Descriptions never mention distractors. Rendering takes about 1 ms per image on one core.

`regions` gives, per view, the exact box (0..1, clipped to the frame) of every static element
that is at least 20% in frame: facade, roof, windows, shutters, door, house number, shop sign,
awning, balcony, flower boxes, phone booth, bench, street lamp, tree, sidewalk, each named by a
phrase such as "the red phone booth" or "the green striped awning".

## Text

- **Description** (one per view, {min_words}-{max_words} words, a hard limit): states every slot
  of the place, absent elements included ("there is no awning and no balcony"), with spatial
  relations computed from the layout ("a red phone booth stands to the left of the green door",
  "a tree shades the right end of the facade, its crown hiding some of the windows", "above the
  door hangs a blue awning"). Each slot has several phrasings and the sentence order is shuffled,
  so the views of a place read differently while the facts stay the same, and the most
  discriminative facts (sign text, house number, colours) are not always first.
- **Initial caption** (one per place, shared by its views): the vague first thing a user says,
  one or two salient attributes in one sentence ("A yellow building with a bakery, I think.").
  With probability `caption_error_rate` (default 0.2) one stated attribute is wrong (replaced by
  another value of its slot): the "user description dilemma". Only the text is stored;
  `dlgpr.data.synth.generate.world_captions(config)` returns the captions with the stated values
  and the wrong slot, without rendering.
- **attributes** in every record is the place's slot dict: the ground truth the simulated user
  answers from.

## One record

`{example_key}` (the image is view 0 of the first row of the figure):

```json
{example_json}
```

## Generating

The world is a pure function of `SynthCitiesConfig` (every random draw comes from a generator
seeded by `(seed, purpose, place_id[, view])`, never global state), so the same config gives
byte-identical shards whatever `num_workers` is. The default world (5 cities x 400 places x 4
views = 8,000 images) generates in about {default_seconds} s with 2 workers on the 2-core build machine.

```bash
# the default world (the data module also does this on first use, from prepare_data)
python scripts/make_synthcities.py --out_dir data/synthcities
# a small world, overwriting what is there
python scripts/make_synthcities.py --out_dir /tmp/small --num_cities 3 --places_per_city 50 --force true
# this page and its figure
python scripts/render_synthcities_grid.py
```

In Python: `ensure_synthcities(out_dir, SynthCitiesConfig(...))` returns the manifest of the world
in `out_dir`, generating it when it is missing or was made with another config (into a temporary
directory renamed into place when complete). The manifest's `extra` holds the generator name and
version and the config (without `num_workers`, which does not change the output).
"""


def main(docs_dir: Path = ROOT / "docs", default_seconds: float = 15.0) -> None:
    """Write the figure and the page into ``docs_dir``.

    Args:
        docs_dir: output folder.
        default_seconds: measured time of the default world, quoted on the page
            (``scripts/make_synthcities.py`` prints it).
    """
    docs_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        generate_synthcities(FIGURE_CONFIG, Path(tmp) / "world")
        by_place = _load(Path(tmp) / "world")
    rows = _pick_rows(by_place)
    png = docs_dir / "synthcities_grid.png"
    render_figure(by_place, rows, png)
    record = by_place[rows[0]][0][0]
    default = SynthCitiesConfig()
    page = PAGE.format(
        city_names=", ".join(c.name for c in make_world(SynthCitiesConfig(places_per_city=1)).cities),
        style_table=_style_table(default), slot_table=_slot_table(), min_words=MIN_WORDS, max_words=MAX_WORDS,
        example_key=record.key, example_json=_record_json(record),
        default_seconds=f"{default_seconds:.0f}")
    (docs_dir / "SYNTHCITIES.md").write_text(page)
    print(f"wrote {png} ({png.stat().st_size / 1024:.0f} KB) and {docs_dir / 'SYNTHCITIES.md'}")


if __name__ == "__main__":
    CLI(main)

"""A tiny GSV-Cities folder (``Dataframes/<City>.csv`` + ``Images/<City>/``) made from a SynthCities world."""

from __future__ import annotations

import csv
from pathlib import Path

from dlgpr.data.schema import PlaceRecord
from dlgpr.data.synth.generate import SynthCitiesConfig, generate_synthcities
from dlgpr.pipeline.gsv import export_gsv_folder


def make_gsv_folder(tmp: Path, cities: int = 3, places: int = 4, views: int = 2, image_size: int = 64,
                    rename: dict[str, str] | None = None) -> tuple[Path, dict[str, PlaceRecord]]:
    """Generate a SynthCities world in ``tmp/synth`` and write it as a GSV-Cities folder ``tmp/gsv``.

    ``rename`` gives cities GSV-Cities folder names (``{"Aurelia": "OSL"}``): the CSV, the image
    folder and the file names change, the records do not. Returns the folder and the source
    record of every image, by file name.
    """
    generate_synthcities(SynthCitiesConfig(num_cities=cities, places_per_city=places, views_per_place=views,
                                           image_size=image_size, num_workers=0), tmp / "synth")
    root = tmp / "gsv"
    written = export_gsv_folder(tmp / "synth", root)
    for old, new in (rename or {}).items():
        (root / "Images" / old).rename(root / "Images" / new)
        for path in sorted((root / "Images" / new).iterdir()):
            name = new + path.name[len(old):]
            path.rename(path.with_name(name))
            written[name] = written.pop(path.name)
        frame = root / "Dataframes" / f"{old}.csv"
        with open(frame, newline="") as fh:
            rows = list(csv.DictReader(fh))
        with open(root / "Dataframes" / f"{new}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({**row, "city_id": new} for row in rows)
        frame.unlink()
    return root, written

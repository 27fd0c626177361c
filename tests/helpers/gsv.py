"""A tiny GSV-Cities folder (``Dataframes/<City>.csv`` + ``Images/<City>/``) made from a SynthCities
world, and ``World``: that folder with the replies a VLM would give for its images (the text stage
of the DQ-Cities builder against ``dlgpr.testing.openai_server.FakeOpenAIServer``)."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

from dlgpr.data.schema import PlaceRecord
from dlgpr.data.synth.generate import SynthCitiesConfig, generate_synthcities
from dlgpr.pipeline.gsv import SplitConfig, export_gsv_folder
from dlgpr.testing.openai_server import Fault, image_sha256s, message_text


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


TEXT_MARKER = "street-view place-recognition dataset"  # in the system prompt of text_expansion_v1
FAULT_PLAN = {0: [Fault.RATE_LIMIT, Fault.SERVER_ERROR], 1: [Fault.TIMEOUT], 2: [Fault.MALFORMED_JSON]}
"""Faults of an image's first attempts, by image-hash class: class 0 fails both attempts of a run
allowed two, classes 1 and 2 succeed on the second attempt."""


def fault_class(sha: str) -> int:
    return int(sha, 16) % 3


class World:
    """A GSV-Cities folder made from SynthCities, and the replies a VLM would give for its images."""

    def __init__(self, root: Path, cities: int = 3, places: int = 5) -> None:
        self.gsv, self.written = make_gsv_folder(root, cities=cities, places=places, views=2, image_size=96)
        self.by_sha = {hashlib.sha256(p.read_bytes()).hexdigest(): self.written[p.name] for p in self.gsv.rglob("*.jpg")}
        self.cities = sorted({r.city for r in self.written.values()})
        self.keys = {r.key for r in self.written.values()}
        self.attempts: Counter[str] = Counter()

    def respond(self, body: dict) -> str | None:
        system = message_text(body["messages"][0])
        if TEXT_MARKER not in system:
            return None  # teacher and user prompts: the server's rule-based replies
        record = self.by_sha[image_sha256s(body)[0]]
        return json.dumps({"initial_caption": record.initial_caption, "description": record.description})

    def policy(self, body: dict) -> Fault | None:
        shas = image_sha256s(body)
        if shas:
            n = self.attempts[shas[0]]
            self.attempts[shas[0]] += 1
            plan = FAULT_PLAN[fault_class(shas[0])]
            return plan[n] if n < len(plan) else None
        return None

    def split(self) -> SplitConfig:
        return SplitConfig(fractions=(1.0, 0.0, 0.0), val_cities=[self.cities[1]], test_cities=[self.cities[2]])

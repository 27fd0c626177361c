"""Generate the SynthCities world (DQ-Cities shards) and report counts and elapsed time.

    python scripts/make_synthcities.py --out_dir data/synthcities
    python scripts/make_synthcities.py --out_dir /tmp/small --num_cities 3 --places_per_city 50 --force true

Every field of ``SynthCitiesConfig`` is a flag (``--help``). A world already in ``--out_dir``
made with the same config is reused unless ``--force true``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from dlgpr.data.synth import SynthCitiesConfig, ensure_synthcities


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    parser.add_argument("--out_dir", type=Path, default=Path("data/synthcities"), help="dataset directory")
    parser.add_argument("--force", type=bool, default=False, help="regenerate even if a matching world exists")
    parser.add_class_arguments(SynthCitiesConfig, nested_key=None)
    args = parser.parse_args(argv)
    config = SynthCitiesConfig(**{f.name: args[f.name] for f in dataclasses.fields(SynthCitiesConfig)})

    start = time.perf_counter()
    manifest = ensure_synthcities(args.out_dir, config, force=args.force)
    elapsed = time.perf_counter() - start

    counts = manifest.counts()
    for split in ("train", "val", "test"):
        c = counts.get(split, {"samples": 0, "places": 0, "shards": 0})
        print(f"{split:>5}: {c['places']:6d} places  {c['samples']:7d} images  {c['shards']:3d} shards")
    total = sum(c["samples"] for c in counts.values())
    print(f"{total} images in {args.out_dir} (num_workers={config.num_workers}): {elapsed:.1f} s")


if __name__ == "__main__":
    main()

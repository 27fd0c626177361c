"""SynthCities: a deterministic procedural street-view world written as DQ-Cities shards.

Real DQ-Cities / GSV-Cities images cannot be fetched where this project is built and tested, so
this package generates a world with exact ground truth and the structure that makes dialogue
useful for place recognition (see ``docs/SYNTHCITIES.md``):

- ``world``: cities with style priors (places of one city look alike) and places as slot dicts
  (``SLOTS``), split by place;
- ``layout`` / ``render``: PIL rendering of several views per place (shift, zoom, light,
  occlusion, transient distractors) with exact region boxes;
- ``text``: 100-200 word descriptions of the static scene, vague (sometimes wrong) captions;
- ``generate``: ``generate_synthcities`` / ``ensure_synthcities`` write the shards.
"""

from dlgpr.data.synth.generate import SynthCitiesConfig, ensure_synthcities, generate_synthcities
from dlgpr.data.synth.world import SLOTS

__all__ = ["SLOTS", "SynthCitiesConfig", "ensure_synthcities", "generate_synthcities"]

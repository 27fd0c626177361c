"""Data: the place-record schema, shard writer and reader, streaming datasets, dialogue records, and
the SynthCities generator (``synth``)."""

import hashlib

import pytest

from dlgpr.data.schema import PlaceRecord
from dlgpr.data.shards import ManifestError, iter_tar_members, read_manifest, write_split
from tests.helpers.shards import make_tiny_dataset, tiny_record


def _files(root):
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_same_input_gives_byte_identical_shards(tmp_path):
    make_tiny_dataset(tmp_path / "a")
    make_tiny_dataset(tmp_path / "b")
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) > 3
    assert a == b


def test_manifest_lists_every_shard_with_counts_and_hash(tiny_dataset):
    m = read_manifest(tiny_dataset)
    counts = m.counts()
    assert counts["train"]["places"] == 24 and counts["train"]["samples"] == 48
    assert counts["val"]["samples"] == 16
    for s in m.shards:
        data = (tiny_dataset / s.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s.sha256
        members = list(iter_tar_members(tiny_dataset / s.path))
        assert len(members) == 2 * s.samples
        records = [PlaceRecord.from_json(b) for n, b in members if n.endswith(".json")]
        assert {r.split for r in records} == {s.split}
        assert len({r.place_id for r in records}) == s.places


def test_places_never_straddle_shards(tmp_path):
    samples = [tiny_record("Alpha", 0, p, v, "train") for p in range(5) for v in range(3)]
    infos = write_split(tmp_path, "train", samples, max_samples_per_shard=4)
    seen = {}
    for info in infos:
        for name, data in iter_tar_members(tmp_path / info.path):
            if name.endswith(".json"):
                pid = PlaceRecord.from_json(data).place_id
                assert seen.setdefault(pid, info.path) == info.path
    assert len(infos) == 3  # 4 samples would split a place: shards close at 6, 6 and 3 samples
    assert [i.samples for i in infos] == [6, 6, 3]


def test_writer_rejects_interleaved_places_and_wrong_split(tmp_path):
    samples = [tiny_record("Alpha", 0, 0, 0, "train"), tiny_record("Alpha", 0, 1, 0, "train"), tiny_record("Alpha", 0, 0, 1, "train")]
    with pytest.raises(ValueError, match="consecutive"):
        write_split(tmp_path / "x", "train", samples)
    with pytest.raises(ValueError, match="split"):
        write_split(tmp_path / "y", "val", [tiny_record("Alpha", 0, 0, 0, "train")])


def test_manifest_errors_are_one_line(tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ManifestError, match="malformed"):
        read_manifest(tmp_path)

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.dqcities import DQCitiesDataModule
from dlgpr.data.shards import read_manifest
from dlgpr.data.streaming import ImageTransform, Preprocessing, RecordCollator
from tests.helpers.shards import make_tiny_dataset


def char_tokenizer(texts):
    out = torch.zeros(len(texts), 24, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [ord(c) % 97 + 1 for c in t[:24]]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


PREP = Preprocessing(image_size=16, tokenizer=char_tokenizer)


def _dm(root, **kw):
    args = dict(data_dir=str(root), synthetic=None, places_per_batch=4, views_per_place=2, eval_batch_size=5, num_workers=0, seed=3)
    args.update(kw)
    dm = DQCitiesDataModule(**args)
    dm.set_preprocessing(PREP)
    dm.setup("fit")
    return dm


def test_place_batched_batches(tiny_dataset):
    dm = _dm(tiny_dataset)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 24 // 4  # 24 train places, P = 4
    seen = Counter()
    for b in batches:
        assert b["image"].shape == (8, 3, 16, 16)
        assert b["tokens"].shape == (8, 24)
        counts = Counter(b["place_id"].tolist())
        assert len(counts) == 4 and set(counts.values()) == {2}  # P distinct places x K views
        # the two rows of a place are its two different views
        for pid in counts:
            assert sorted(b["view"][b["place_id"] == pid].tolist()) == [0, 1]
        seen.update(counts.keys())
    assert len(seen) == 24 and set(seen.values()) == {1}  # every place once per epoch


def test_epoch_order_is_seeded(tiny_dataset):
    def order(epoch, seed=3):
        ds = _dm(tiny_dataset, seed=seed).train_dataset()
        ds.set_epoch(epoch)
        return [b["place_id"].tolist() for b in ds]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(0) != order(0, seed=4)


def _keys_eval(ds, rank, world, workers):
    ds.set_distributed(rank, world)
    loader = DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=RecordCollator(None))
    return [k for b in loader for k in b["key"]]


def test_eval_stream_each_sample_once_across_2_ranks_x_2_workers(tiny_dataset):
    dm = _dm(tiny_dataset, num_workers=2)
    manifest = read_manifest(tiny_dataset)
    assert len(manifest.split_shards("train")) >= 4
    keys = []
    for rank in range(2):
        keys += _keys_eval(dm.eval_dataset("train"), rank, 2, 2)
    assert len(keys) == manifest.counts()["train"]["samples"]
    assert len(set(keys)) == len(keys)


def test_train_stream_disjoint_and_equal_length_across_2_ranks_x_2_workers(tiny_dataset):
    dm = _dm(tiny_dataset, num_workers=2, places_per_batch=2)
    per_rank = []
    for rank in range(2):
        ds = dm.train_dataset()
        ds.set_distributed(rank, 2)
        expected_len = len(ds)
        loader = DataLoader(ds, batch_size=None, num_workers=2)
        batches = list(loader)
        assert len(batches) == expected_len
        per_rank.append([pid for b in batches for pid in set(b["place_id"].tolist())])
    assert len(per_rank[0]) == len(per_rank[1]) > 0  # same number of batches (and places) per rank
    all_places = per_rank[0] + per_rank[1]
    assert len(set(all_places)) == len(all_places)  # no place served twice in the epoch
    assert len(all_places) >= 24 - 2 * 2 * (2 - 1)  # at most P - 1 places left over per worker


def _rewrite_member(tar_path: Path, mutate):
    members = []
    with tarfile.open(tar_path) as tar:
        for m in tar:
            members.append((m.name, tar.extractfile(m).read()))
    with tarfile.open(tar_path, "w") as tar:
        for name, data in members:
            new = mutate(name, data)
            if new is None:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(new)
            tar.addfile(info, io.BytesIO(new))


def test_bad_data_is_skipped_counted_and_reported(tmp_path, caplog):
    root = tmp_path / "bad"
    manifest = make_tiny_dataset(root, places={"train": 12}, per_shard=8)
    shards = manifest.split_shards("train")
    total = manifest.counts()["train"]["samples"]
    # 1: an image that does not decode; 2: a json missing a field; 3: a truncated tar
    first_jpg = [n for n, _ in _members(root / shards[0].path) if n.endswith(".jpg")][0]
    _rewrite_member(root / shards[0].path, lambda n, d: b"not a jpeg" if n == first_jpg else d)
    first_json = [n for n, _ in _members(root / shards[1].path) if n.endswith(".json")][0]
    _rewrite_member(root / shards[1].path, lambda n, d: d.replace(b'"description"', b'"descr"') if n == first_json else d)
    data = (root / shards[2].path).read_bytes()
    (root / shards[2].path).write_bytes(data[: len(data) // 2])

    dm = _dm(root)
    ds = dm.eval_dataset("train")
    with caplog.at_level(logging.WARNING, logger="dlgpr.data"):
        delivered = [s["key"] for s in ds]
    bad = ds.last_bad
    kinds = bad.by_kind()
    assert kinds["bad_image"] == 1 and kinds["bad_json"] == 1 and kinds["truncated_tar"] >= 1
    assert len(delivered) + bad.total == total  # every sample is either delivered or counted
    warnings = [r.getMessage() for r in caplog.records if "bad sample" in r.getMessage()]
    assert len(warnings) == 1  # once per epoch
    for s in shards[:3]:
        assert s.path in warnings[0]

    # training still yields its full epoch: a top-up pass replaces the lost places
    train = dm.train_dataset()
    assert sum(1 for _ in train) == len(train) == 24 // 4


def _members(path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def test_missing_data_dir_is_a_one_line_error(tmp_path):
    dm = DQCitiesDataModule(data_dir=str(tmp_path / "nowhere"), synthetic=None)
    with pytest.raises(FileNotFoundError) as exc:
        dm.prepare_data()
    msg = str(exc.value)
    assert "\n" not in msg and str(tmp_path / "nowhere") in msg and "make_synthcities.py" in msg


def test_eval_transform_is_deterministic_and_normalised(tiny_dataset):
    t = ImageTransform(PREP)
    from PIL import Image

    img = Image.new("RGB", (32, 32), (255, 0, 0))
    a, b = t(img), t(img)
    assert torch.equal(a, b) and a.shape == (3, 16, 16)
    assert a[0].mean().item() == pytest.approx((1.0 - PREP.mean[0]) / PREP.std[0], rel=1e-4)


@pytest.mark.parametrize("shards_per_split", [1, 2, 3, 5])
def test_eval_stream_covers_each_sample_once_whatever_the_shard_count(tmp_path, shards_per_split):
    # fewer shards than ranks x workers must still give every rank data, each sample once
    root = tmp_path / f"s{shards_per_split}"
    per_shard = -(-2 * 10 * 2 // shards_per_split)  # 2 cities x 10 places x 2 views
    manifest = make_tiny_dataset(root, places={"val": 10}, per_shard=per_shard)
    n_shards = len(manifest.split_shards("val"))
    dm = _dm(root, num_workers=2)
    per_rank = [_keys_eval(dm.eval_dataset("val"), rank, 2, 2) for rank in range(2)]
    keys = per_rank[0] + per_rank[1]
    assert all(per_rank), f"a rank got no sample with {n_shards} shard(s)"
    assert len(keys) == len(set(keys)) == manifest.counts()["val"]["samples"]


def test_empty_description_is_rejected_with_the_key_and_field_named(tmp_path, caplog):
    root = tmp_path / "empty"
    manifest = make_tiny_dataset(root, places={"val": 4}, per_shard=8)
    shard = manifest.split_shards("val")[0]
    first_json = [n for n, _ in _members(root / shard.path) if n.endswith(".json")][0]
    key = first_json.rsplit(".", 1)[0]

    def blank(name, data):
        if name != first_json:
            return data
        record = json.loads(data)
        record["description"] = "   "
        return json.dumps(record).encode()

    _rewrite_member(root / shard.path, blank)
    ds = _dm(root).eval_dataset("val")
    with caplog.at_level(logging.WARNING, logger="dlgpr.data"):
        keys = [s["key"] for s in ds]
    assert key not in keys and len(keys) == manifest.counts()["val"]["samples"] - 1
    assert ds.last_bad.by_kind() == {"bad_json": 1}
    message = next(r.getMessage() for r in caplog.records if "bad sample" in r.getMessage())
    assert f"{key}: description must be a non-empty string" in message and shard.path in message


def test_dialogue_style_query_keeps_caption_and_draws_description_sentences():
    import random

    from dlgpr.data.streaming import dialogue_style_query

    desc = "The door is red. A bench stands left! Is the roof flat? The facade is blue."
    sentences = {"The door is red.", "A bench stands left!", "Is the roof flat?", "The facade is blue."}
    for seed in range(20):
        q = dialogue_style_query("a red door", desc, random.Random(seed), max_sentences=2)
        assert q.startswith("a red door ")
        drawn = [s for s in sentences if s in q]
        assert 1 <= len(drawn) <= 2
        assert len(q) == len("a red door") + sum(len(s) + 1 for s in drawn)  # nothing but caption + drawn sentences
    assert dialogue_style_query("cap", "", random.Random(0), 3) == "cap"


def test_rephrased_answers_use_only_the_sentence_words_in_each_of_three_shapes():
    import random
    from collections import Counter

    from dlgpr.data.streaming import dialogue_style_query, rephrase_sentence

    sentence = "A teal brick facade rises four storeys above the busy street."
    words = Counter(w.lower() for w in sentence.rstrip(".").split())
    shapes = Counter()
    for seed in range(300):
        out = rephrase_sentence(sentence, random.Random(seed))
        assert out.endswith(".") and out[0].isupper()
        got = Counter(w.lower() for w in out.rstrip(".").split())
        assert not got - words  # no word that the sentence does not have, none more often
        joined = " ".join(out.rstrip(".").lower().split())
        if got == words and joined != " ".join(sentence.rstrip(".").lower().split()):
            shapes["shuffled"] += 1
        elif joined in sentence.lower():
            shapes["fragment"] += 1
        else:
            shapes["dropped"] += 1
    assert all(shapes[k] > 50 for k in ("shuffled", "fragment", "dropped")), shapes
    assert rephrase_sentence("Red door.", random.Random(0)) == "Red door."  # too short to re-shape
    desc = "The door is red. A bench stands left. The facade is blue."
    # rephrase_prob 0 draws exactly what the plain query draws (same random stream)
    assert all(dialogue_style_query("cap", desc, random.Random(s), 3, 0.0) == dialogue_style_query("cap", desc, random.Random(s), 3)
               for s in range(20))
    changed = sum(dialogue_style_query("cap", desc, random.Random(s), 3, 1.0) != dialogue_style_query("cap", desc, random.Random(s), 3)
                  for s in range(50))
    assert changed > 25


def test_text_augment_replaces_the_configured_share_of_texts(tiny_dataset):
    from dlgpr.data.streaming import TextAugmentConfig

    def texts(prob):
        dm = _dm(tiny_dataset, text_augment=TextAugmentConfig(query_prob=prob, max_sentences=3))
        return {k: (t, c) for b in dm.train_dataloader() for k, t, c in zip(b["key"], b["text"], b["caption"])}

    records = {r.key: r for r in _dm(tiny_dataset).records("train")}
    full = texts(0.0)
    assert full and all(t == records[k].description for k, (t, _) in full.items())
    augmented = texts(1.0)
    assert augmented.keys() == full.keys()
    for k, (t, c) in augmented.items():
        assert t != records[k].description and t.startswith(c)
        rest = t[len(c):].strip()
        assert rest and all(s in records[k].description for s in rest.split(". ") if s)
    with pytest.raises(ValueError, match="query_prob"):
        TextAugmentConfig(query_prob=1.5)
    with pytest.raises(ValueError, match="rephrase_prob"):
        TextAugmentConfig(rephrase_prob=-0.1)


def test_answer_prob_appends_the_simulated_users_answers(tiny_dataset):
    from dlgpr.data.streaming import TextAugmentConfig
    from dlgpr.data.synth.dialogue import answer_sentence

    dm = _dm(tiny_dataset, text_augment=TextAugmentConfig(query_prob=1.0, answer_prob=1.0, max_sentences=3))
    records = {r.key: r for r in _dm(tiny_dataset).records("train")}
    seen = 0
    for batch in dm.train_dataloader():
        for key, text, caption in zip(batch["key"], batch["text"], batch["caption"]):
            attrs = records[key].attributes
            answers = {answer_sentence(slot, value, attrs) for slot, value in attrs.items()}
            rest = text[len(caption):].strip()
            assert text.startswith(caption) and rest
            sentences = [s if s.endswith(".") else s + "." for s in rest.split(". ")]
            assert set(sentences) <= answers and len(sentences) == len(set(sentences))
            seen += 1
    assert seen
    with pytest.raises(ValueError, match="answer_prob"):
        TextAugmentConfig(answer_prob=2.0)


def test_lexical_neighbour_order_puts_each_anchors_nearest_descriptions_first():
    from dlgpr.data.streaming import BatchMiningConfig, lexical_neighbour_order

    descriptions = ["the red door and the red awning", "the blue door", "the red awning", "the green bench",
                    "the red door", "the blue door and the blue awning", "the green bench and the tree"]
    order = [1, 3, 0, 2, 4, 5, 6]
    assert lexical_neighbour_order(descriptions, order, 4, BatchMiningConfig(hard_fraction=0.0)) == order
    # one anchor (position 1, "the blue door"), 4 x 0.75 = 3 places. idf over the 7: "the" 0, "blue"
    # ln 3.5, "door" ln 1.75: itself and 5 (blue + door, tied, order decides), then 0 and 4 (door;
    # 0 comes first in ``order``)
    mined = lexical_neighbour_order(descriptions, order, 4, BatchMiningConfig(hard_fraction=0.75, groups=1))
    assert mined[:3] == [1, 5, 0]
    assert sorted(mined) == sorted(order) and mined[3:] == [i for i in order if i not in mined[:3]]
    # two anchors of two places each: the blue door's nearest, then the green bench's
    mined = lexical_neighbour_order(descriptions, order, 4, BatchMiningConfig(hard_fraction=1.0, groups=2))
    assert mined[:4] == [1, 5, 3, 6]
    with pytest.raises(ValueError, match="hard_fraction"):
        BatchMiningConfig(hard_fraction=1.5)


def test_batch_mining_fills_a_batch_with_lexically_similar_places(tiny_dataset):
    from dlgpr.data.streaming import BatchMiningConfig

    def first_batch_colours(config):
        batch = next(iter(_dm(tiny_dataset, batch_mining=config).train_dataloader()))
        return {text.split()[1] for text in batch["text"]}  # "a <colour> building number ..."

    assert len(first_batch_colours(BatchMiningConfig(hard_fraction=1.0, groups=1))) == 1  # one colour
    assert len(first_batch_colours(BatchMiningConfig())) > 1  # random places

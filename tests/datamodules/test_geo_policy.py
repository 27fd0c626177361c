"""GeoPolicyDataModule on a tiny geo world and a hand-written geo-reasoning build: what each task yields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamodules.geo_policy import GeoPolicyDataModule, SFTImageCollator, cot_completion, samples_collate
from dlgpr.data.geo import GeoSample, read_synthcities_geo
from dlgpr.models.prompting import CAPTION_QUESTION, GEO_QUESTION, PromptConfig
from dlgpr.models.questioner import GEO_FORMAT_TAGS, PolicyConfig, load_policy, train_corpus_tokenizer
from dlgpr.pipeline.geo_reasoning import FORMAT, write_shards
from tests.helpers.geo import make_geo_world
from tests.modules.test_globe_policy import IMAGE, TEXTS

KEPT_REASONING = "A red awning and a blue door, a mansard roof."


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("geo") / "world"
    make_geo_world(out)  # 4 cities in 2 countries, 6 places each, 2 views: 24 train / 8 val / 8 test images
    return out


def write_reasoning(world: Path, out: Path) -> Path:
    """A geo-reasoning build of the world's train images: even places kept (the teacher's answer
    may differ from the truth: it is the answer that is trained on), odd places rejected."""
    rows = []
    for s in read_synthcities_geo(str(world), "train"):
        kept = s.place_id % 2 == 0
        meta = {"key": s.key, "place_id": s.place_id, "kept": kept, "city": s.city, "country": s.country,
                "reasoning": KEPT_REASONING if kept else "Nothing to go on.", "answer": {"city": "Borgo", "country": "Valdoria"}}
        rows.append((s, meta))
    (out / "manifest.json").parent.mkdir(parents=True, exist_ok=True)
    shards = write_shards(out, rows, shard_size=5)
    (out / "manifest.json").write_text(json.dumps({"format": FORMAT, "shards": shards, "samples": len(rows)}))
    return out


def test_cot_completion_is_globes_reply_format() -> None:
    assert cot_completion("  Red awnings, blue doors. ", "Borgo", "Valdoria") == \
        "<think>Red awnings, blue doors.</think>\n<answer>Borgo, Valdoria</answer>"


def test_caption_task_pairs_each_image_with_its_description(world: Path) -> None:
    dm = GeoPolicyDataModule(task="caption", world_dir=str(world), max_caption_words=5, max_val_samples=None)
    dm.setup("fit")
    train = {s.key: s for s in read_synthcities_geo(str(world), "train")}
    val = {s.key for s in read_synthcities_geo(str(world), "val")}
    assert [ex.key for ex in dm.train] == list(train) and {ex.key for ex in dm.val} == val
    for ex in dm.train:
        s = train[ex.key]
        assert ex.question == CAPTION_QUESTION and ex.place == str(s.place_id)
        assert ex.jpeg == s.image_data()
        words = ex.completion.split()
        assert len(words) == 5 and words == s.record.description.split()[:5]
    assert len({ex.completion for ex in dm.train}) > 1  # each place its own description


def test_cot_task_trains_on_the_kept_samples_only(world: Path, tmp_path: Path) -> None:
    build = write_reasoning(world, tmp_path / "reasoning")
    train = list(read_synthcities_geo(str(world), "train"))
    kept = {s.key: s for s in train if s.place_id % 2 == 0}
    assert 0 < len(kept) < len(train)
    dm = GeoPolicyDataModule(task="cot", world_dir=str(world), reasoning_dir=str(build), val_fraction=0.25, max_val_samples=None)
    dm.setup("fit")
    got = dm.train + dm.val
    assert sorted(ex.key for ex in got) == sorted(kept)
    assert dm.train and dm.val and not {ex.place for ex in dm.train} & {ex.place for ex in dm.val}  # held out by place
    for ex in got:
        assert ex.question == GEO_QUESTION and ex.jpeg == kept[ex.key].image_data()
        # the teacher's answer (the build's "answer"), not the sample's own city
        assert ex.completion == "<think>A red awning and a blue door, a mansard roof.</think>\n<answer>Borgo, Valdoria</answer>"


def test_grpo_task_yields_the_requested_splits_as_geo_samples(world: Path) -> None:
    dm = GeoPolicyDataModule(task="grpo", world_dir=str(world), batch_size=4, max_val_samples=None, limit=8)
    dm.set_processor(None, True, "prompts")
    dm.setup("fit")
    train_keys = [s.key for s in read_synthcities_geo(str(world), "train")]
    assert [s.key for s in dm.train] == train_keys[:8]  # limit: the first 8
    assert [s.key for s in dm.val] == [s.key for s in read_synthcities_geo(str(world), "val")]
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and all(len(b) == 4 and all(isinstance(s, GeoSample) for s in b) for b in batches)
    assert sorted(s.key for b in batches for s in b) == sorted(train_keys[:8])
    assert samples_collate(dm.val[:2]) == dm.val[:2]
    [val_batch] = list(dm.val_dataloader())
    assert [s.key for s in val_batch] == [s.key for s in dm.val] and all(s.city and s.country for s in val_batch)


def test_sft_collator_labels_the_completion_and_its_end_of_turn_only(world: Path, tmp_path: Path) -> None:
    train_corpus_tokenizer(TEXTS, vocab_size=400, tags=GEO_FORMAT_TAGS).save_pretrained(str(tmp_path / "tok"))
    _, processor = load_policy(PolicyConfig(model=str(tmp_path / "tok"), image=IMAGE))
    dm = GeoPolicyDataModule(task="caption", world_dir=str(world), max_caption_words=4, batch_size=3, max_val_samples=None,
                             prompt=PromptConfig(max_prompt_tokens=128))
    dm.set_processor(processor, True, "sft")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    tok = SFTImageCollator(processor, dm.prompt).tokenizer
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape and len(batch["images"]) == 3
    by_key = {ex.completion for ex in dm.train}
    for row in range(3):
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert labelled[-1] == tok.eos_token_id
        assert tok.decode(labelled[:-1]) in by_key
        n = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, n - len(labelled) : n].tolist() == labelled  # the completion ends the row


def test_bad_configs_fail_in_one_line(world: Path) -> None:
    with pytest.raises(ValueError, match=r"^task must be one of \('caption', 'cot', 'grpo'\), got 'captions'$"):
        GeoPolicyDataModule(task="captions", world_dir=str(world))
    with pytest.raises(ValueError, match="val_fraction"):
        GeoPolicyDataModule(task="cot", val_fraction=1.0)
    dm = GeoPolicyDataModule(task="caption", world_dir=str(world))
    with pytest.raises(ValueError, match="does not fit a module that wants 'prompts' batches"):
        dm.set_processor(None, True, "prompts")  # a GRPO module on SFT data

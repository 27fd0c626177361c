"""The DQ-Pilot dialogue corpus: turn records, the DDI split, shards, candidate sets, generation and resume."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from dlgpr.data.reader import BadSampleLog
from dlgpr.data.schema import PlaceRecord, RecordError, make_key
from dlgpr.data.shards import DeterministicTar
from dlgpr.data.synth.dialogue import SLOT_QUESTIONS, answer_sentence
from dlgpr.data.synth.generate import SynthCitiesConfig, make_world
from dlgpr.data.turns import (
    DIALOGUE_FORMAT,
    MANIFEST_NAME,
    DialogueTurnRecord,
    read_dialogue_manifest,
    read_turns,
    turn_key,
    write_dialogue_manifest,
    write_turn_shards,
)
from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.dialogue.loop import DialogueQuery
from dlgpr.dialogue.questioners import OracleTeacherQuestioner
from dlgpr.data.turns import Question, Target, Turn
from dlgpr.dialogue.types import compose_query
from dlgpr.metrics import prg as prg_metric
from dlgpr.pipeline.chunks import build_split_turns
from dlgpr.pipeline.ddi_split import split_by_ddi
from dlgpr.pipeline.dialogues import CorpusConfig, compact_candidate_sets, generate_turns
from dlgpr.ranking import Gallery, gallery_positive_ranks
from tests.helpers.lexical import LexicalRetriever


def make_turn(place_id: int = 1, round_: int = 1, prg: float = 0.5, ddi: float = 0.3, **kw) -> DialogueTurnRecord:
    fields = dict(
        key=turn_key(place_id, round_), place_id=place_id, round=round_, initial_description="a red building",
        history=[{"question": "What colour is the door?", "answer": "The door is blue."}] * (round_ - 1),
        candidates=[f"Alpha_{place_id:07d}_0", f"Alpha_{place_id:07d}_1", "Beta_0000003_0"], think="1. History: ...",
        question="What is the house number?", answer="The house number is 12.", prg=prg, sa=0.2, ddi=ddi,
    )
    fields.update(kw)
    return DialogueTurnRecord(**fields)


# ---- the turn record -------------------------------------------------------------------------------


def test_turn_key_format():
    assert turn_key(42, 3) == "d000000042_r3"


def test_turn_record_json_round_trip():
    t = make_turn(7, 2, prg=-0.25, ddi=0.875, stage="grpo", think="", answer="Ünïcode answer ✓.")
    raw = t.to_json()
    back = DialogueTurnRecord.from_json(raw)
    assert back == t
    assert DialogueTurnRecord.from_json(raw.decode()) == t
    assert DialogueTurnRecord.from_json(json.loads(raw)) == t
    # canonical bytes: the same record always serialises the same way
    assert back.to_json() == raw
    # unknown extra keys are ignored, ints are accepted for the numbers (and become floats)
    d = json.loads(raw)
    d["something_new"] = 1
    d["prg"] = 1
    r = DialogueTurnRecord.from_json(d)
    assert r.prg == 1.0 and isinstance(r.prg, float)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.pop("prg"), ["missing", "prg"]),
        (lambda d: d.pop("candidates"), ["missing", "candidates"]),
        (lambda d: d.update(prg=float("nan")), ["prg", "finite"]),
        (lambda d: d.update(ddi=float("inf")), ["ddi", "finite"]),
        (lambda d: d.update(question="   "), ["question", "non-empty"]),
        (lambda d: d.update(answer=""), ["answer", "non-empty"]),
        (lambda d: d.update(stage="train"), ["stage"]),
        (lambda d: d.update(candidates="Alpha_0000001_0"), ["candidates", "list"]),
        (lambda d: d.update(candidates=[]), ["candidates"]),
        (lambda d: d.update(round=0), ["round"]),
        (lambda d: d.update(place_id="7"), ["place_id"]),
        (lambda d: d.update(history=[{"question": "q"}]), ["history"]),
        (lambda d: d.update(sa=True), ["sa"]),
    ],
)
def test_turn_record_rejects_bad_fields_by_name(change, words):
    d = json.loads(make_turn(7, 2).to_json())
    change(d)
    with pytest.raises(RecordError) as info:
        DialogueTurnRecord.from_json(json.dumps(d))  # NaN/inf survive json.dumps/loads as literals
    msg = str(info.value)
    assert all(w in msg for w in words), msg
    if "key" in d:
        assert "d000000007_r2" in msg  # the message names the record
    with pytest.raises(RecordError):
        DialogueTurnRecord.from_json(d)  # the dict path and the constructor check the same things


def test_turn_record_constructor_and_non_json():
    with pytest.raises(RecordError, match="prg must be a finite number"):
        make_turn(prg=float("nan"))
    with pytest.raises(RecordError, match="stage"):
        make_turn(stage="test")
    with pytest.raises(RecordError, match="key"):
        make_turn(key="")
    with pytest.raises(RecordError, match="not JSON"):
        DialogueTurnRecord.from_json(b"{not json")
    with pytest.raises(RecordError, match="JSON object"):
        DialogueTurnRecord.from_json(b"[1, 2]")


# ---- the DDI split ---------------------------------------------------------------------------------

# (prg, ddi) of 20 turns. Four have PRG < 0 and are dropped; one has PRG == 0 (kept: the filter is
# prg >= tau_1). The 16 kept DDIs sorted: .05 .08 .10 .12 .15 .20 .22 .25 | .40 .45 .50 .55 .60 .70 .80 .90
# -> median threshold = the 8th smallest (index (16 - 1) // 2 = 7) = 0.25; 8 low (<= 0.25), 8 high.
SPLIT_TURNS = [
    (0.50, 0.05), (0.40, 0.90), (-0.10, 0.01), (0.30, 0.08), (0.90, 0.80),
    (0.20, 0.10), (-0.50, 0.99), (0.60, 0.70), (0.00, 0.12), (0.70, 0.60),
    (0.10, 0.15), (0.80, 0.55), (-0.01, 0.30), (0.25, 0.20), (0.35, 0.50),
    (0.45, 0.22), (0.55, 0.45), (-1.00, 0.02), (0.65, 0.25), (0.75, 0.40),
]
DROPPED = {2, 6, 12, 17}
LOW = {0, 3, 5, 8, 10, 13, 15, 18}
HIGH = {1, 4, 7, 9, 11, 14, 16, 19}


def split_turns() -> list[DialogueTurnRecord]:
    return [make_turn(place_id=100 + i, round_=1, prg=p, ddi=d) for i, (p, d) in enumerate(SPLIT_TURNS)]


def _index(t: DialogueTurnRecord) -> int:
    return t.place_id - 100


def test_split_by_ddi_filter_threshold_and_explicit_sizes():
    turns = split_turns()
    stages, info = split_by_ddi(turns, CorpusConfig(sft_size=10, grpo_size=4, seed=3))
    assert info["turns"] == 20 and info["kept_after_prg_filter"] == 16
    assert info["ddi_threshold"] == pytest.approx(0.25)
    assert (info["low_ddi"], info["high_ddi"]) == (8, 8)
    sft, grpo = stages["sft"], stages["grpo"]
    # SFT: round(0.7 * 10) = 7 low + 3 high; GRPO: round(0.7 * 4) = 3 high + 1 low (the last low turn)
    assert len(sft) == 10 and len(grpo) == 4
    assert sum(_index(t) in LOW for t in sft) == 7 and sum(_index(t) in HIGH for t in sft) == 3
    assert sum(_index(t) in HIGH for t in grpo) == 3 and sum(_index(t) in LOW for t in grpo) == 1
    assert info["sft"] == {"turns": 10, "low_ddi": 7, "high_ddi": 3}
    assert info["grpo"] == {"turns": 4, "low_ddi": 1, "high_ddi": 3}
    used = [_index(t) for t in sft + grpo]
    assert not set(used) & DROPPED  # PRG < 0 never sampled
    assert len(set(used)) == len(used)  # disjoint stages
    assert set(used) >= LOW  # all 8 low turns are used (7 + 1)
    assert all(t.stage == "sft" for t in sft) and all(t.stage == "grpo" for t in grpo)
    assert [t.key for t in sft] == sorted(t.key for t in sft)
    # the input records are untouched (stage is set on copies)
    assert all(t.stage == "" for t in turns)
    # stage records are the original turns otherwise
    by_key = {t.key: t for t in turns}
    assert all(replace(t, stage="") == by_key[t.key] for t in sft + grpo)


def test_split_by_ddi_automatic_sizes():
    # size_ratio r = 2, fs = fg = 0.7: low per GRPO turn = 0.7 * 2 + 0.3 = 1.7, high = 0.3 * 2 + 0.7 = 1.3
    # R = floor(min(8 / 1.7, 8 / 1.3)) = floor(min(4.71, 6.15)) = 4, S = 2 * 4 = 8
    # SFT: round(5.6) = 6 low + 2 high; GRPO: round(2.8) = 3 high + 1 low
    stages, info = split_by_ddi(split_turns(), CorpusConfig())
    assert len(stages["grpo"]) == 4 and len(stages["sft"]) == 8
    assert info["sft"] == {"turns": 8, "low_ddi": 6, "high_ddi": 2}
    assert info["grpo"] == {"turns": 4, "low_ddi": 1, "high_ddi": 3}
    assert sum(_index(t) in LOW for t in stages["sft"]) == 6
    assert sum(_index(t) in HIGH for t in stages["grpo"]) == 3
    # ratio 1 with fs = fg = 0.5: 1 low + 1 high per GRPO turn... R = floor(min(8/1, 8/1)) = 8, S = 8
    stages, info = split_by_ddi(split_turns(), CorpusConfig(size_ratio=1.0, sft_low_fraction=0.5, grpo_high_fraction=0.5))
    assert len(stages["sft"]) == 8 and len(stages["grpo"]) == 8
    assert info["sft"]["low_ddi"] == 4 and info["grpo"]["high_ddi"] == 4


def test_split_by_ddi_threshold_and_prg_filter_options():
    # tau_1 = 0.3 keeps PRG >= 0.3: indices 0 1 3 4 7 9 11 14 15 16 18 19 (12 turns)
    # their DDIs sorted: .05 .08 .22 .25 .40 .45 .50 .55 .60 .70 .80 .90 -> median index 5 = 0.45
    stages, info = split_by_ddi(split_turns(), CorpusConfig(prg_threshold=0.3, sft_size=0, grpo_size=0))
    assert info["kept_after_prg_filter"] == 12
    assert info["ddi_threshold"] == pytest.approx(0.45)
    assert (info["low_ddi"], info["high_ddi"]) == (6, 6)
    assert stages == {"sft": [], "grpo": []}
    # an explicit DDI threshold replaces the median
    _, info = split_by_ddi(split_turns(), CorpusConfig(ddi_threshold=0.1, sft_size=0, grpo_size=0))
    assert (info["low_ddi"], info["high_ddi"]) == (3, 13)  # .05 .08 .10 <= 0.1


def test_split_by_ddi_asks_for_more_than_there_is():
    stages, info = split_by_ddi(split_turns(), CorpusConfig(sft_size=20, grpo_size=20))
    # SFT takes every low turn (min(14, 8)) and 6 high ones; GRPO gets the 2 high and 0 low left
    assert info["sft"] == {"turns": 14, "low_ddi": 8, "high_ddi": 6}
    assert info["grpo"] == {"turns": 2, "low_ddi": 0, "high_ddi": 2}
    keys = [t.key for s in stages.values() for t in s]
    assert len(keys) == len(set(keys)) == 16


def test_split_by_ddi_is_deterministic_under_the_seed():
    cfg = CorpusConfig(sft_size=5, grpo_size=3, seed=11)
    a, _ = split_by_ddi(split_turns(), cfg)
    b, _ = split_by_ddi(split_turns(), cfg)
    assert a == b
    picks = set()
    for seed in range(6):
        s, _ = split_by_ddi(split_turns(), replace(cfg, seed=seed))
        picks.add(tuple(t.key for t in s["sft"] + s["grpo"]))
    assert len(picks) > 1  # the seed does choose which turns


def test_random_stage_sampling_keeps_the_sizes_and_ignores_ddi():
    # the paper's "random sampling" row: the same stage sizes as the DDI draw, turns drawn at random
    turns = [make_turn(place_id=1000 + i, prg=0.1 + (i % 7) / 10, ddi=i / 400) for i in range(400)]
    cfg = CorpusConfig(seed=5)
    by_ddi, info_ddi = split_by_ddi(turns, cfg)
    drawn, info = split_by_ddi(turns, replace(cfg, stage_sampling="random"))
    assert info["stage_sampling"] == "random" and info_ddi["stage_sampling"] == "ddi"
    assert {s: len(v) for s, v in drawn.items()} == {s: len(v) for s, v in by_ddi.items()}
    assert len(drawn["sft"]) > 100 and len(drawn["grpo"]) > 50
    keys = [t.key for v in drawn.values() for t in v]
    assert len(keys) == len(set(keys))  # disjoint
    assert {t.key for t in by_ddi["sft"]} != {t.key for t in drawn["sft"]}  # not the DDI selection reshuffled
    # DDI draw: SFT 70 % low-DDI, GRPO 70 % high; random draw: both near the pool's 50 %
    assert info_ddi["sft"]["low_ddi"] / len(by_ddi["sft"]) == pytest.approx(0.7, abs=0.01)
    for stage in ("sft", "grpo"):
        share = info[stage]["low_ddi"] / len(drawn[stage])
        assert abs(share - 0.5) < 0.12, (stage, share)
        assert info[stage]["low_ddi"] == sum(t.ddi <= info["ddi_threshold"] for t in drawn[stage])
    assert drawn == split_by_ddi(turns, replace(cfg, stage_sampling="random"))[0]  # seeded
    with pytest.raises(ValueError, match="stage_sampling"):
        CorpusConfig(stage_sampling="by_prg")  # type: ignore[arg-type]


# ---- shards and manifest ---------------------------------------------------------------------------


def corpus_turns() -> dict[str, list[DialogueTurnRecord]]:
    return {
        "sft": [make_turn(p, r, prg=0.1 * r, ddi=0.05 * p, stage="sft") for p in (1, 2, 3) for r in (1, 2)],
        "grpo": [make_turn(p, 1, prg=0.3, ddi=0.7, stage="grpo") for p in (4, 5, 6, 7)],
        "val": [make_turn(p, 3, prg=-0.2, ddi=0.4, stage="val") for p in (8, 9)],
    }


def write_corpus(out: Path, max_per_shard: int = 4) -> list[dict]:
    shards = []
    for stage, turns in corpus_turns().items():
        shards += write_turn_shards(out, stage, turns, max_per_shard)
    write_dialogue_manifest(out, shards, {"note": "test"})
    return shards


def test_shards_manifest_round_trip(tmp_path):
    shards = write_corpus(tmp_path)
    # 6 sft turns at 4 per shard -> 2 shards (4 + 2); grpo 1; val 1
    assert [(s["path"], s["turns"]) for s in shards] == [
        ("sft-00000.tar", 4), ("sft-00001.tar", 2), ("grpo-00000.tar", 4), ("val-00000.tar", 2)
    ]
    assert shards[0]["places"] == 2 and shards[1]["places"] == 1
    for s in shards:
        assert hashlib.sha256((tmp_path / s["path"]).read_bytes()).hexdigest() == s["sha256"]
    m = read_dialogue_manifest(tmp_path)
    assert m["format"] == DIALOGUE_FORMAT
    assert m["counts"] == {"sft": {"turns": 6, "shards": 2}, "grpo": {"turns": 4, "shards": 1}, "val": {"turns": 2, "shards": 1}}
    assert m["extra"] == {"note": "test"}
    want = corpus_turns()
    assert read_turns(tmp_path, ["sft"]) == want["sft"]
    assert read_turns(tmp_path, ["val"]) == want["val"]
    both = read_turns(tmp_path, ["sft", "grpo"])
    assert sorted(t.to_json() for t in both) == sorted(t.to_json() for t in want["sft"] + want["grpo"])
    with pytest.raises(ValueError, match="unknown stage"):
        read_turns(tmp_path, ["train"])
    with pytest.raises(ValueError, match="stage must be one of"):
        write_turn_shards(tmp_path, "train", want["sft"], 4)


def test_shards_are_byte_deterministic_and_rewrites_drop_old_shards(tmp_path):
    write_corpus(tmp_path / "a")
    write_corpus(tmp_path / "b")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert hashlib.sha256((tmp_path / "a" / name).read_bytes()).digest() == hashlib.sha256((tmp_path / "b" / name).read_bytes()).digest()
    # rewriting a stage with fewer turns leaves no stale shard of that stage behind
    write_turn_shards(tmp_path / "a", "sft", corpus_turns()["sft"][:1], 4)
    assert sorted(p.name for p in (tmp_path / "a").glob("sft-*.tar")) == ["sft-00000.tar"]


def test_read_dialogue_manifest_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        read_dialogue_manifest(tmp_path)
    assert MANIFEST_NAME in str(info.value) and "\n" not in str(info.value)
    write_corpus(tmp_path)
    m = json.loads((tmp_path / MANIFEST_NAME).read_text())
    bad = {**m, "format": "dqcities"}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(bad))
    with pytest.raises(ValueError) as info:
        read_dialogue_manifest(tmp_path)
    assert "'dqcities'" in str(info.value) and DIALOGUE_FORMAT in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="format"):
        read_turns(tmp_path, ["sft"])
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**m, "schema_version": "2.0"}))
    with pytest.raises(ValueError, match="schema_version 2.0"):
        read_dialogue_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({k: v for k, v in m.items() if k != "shards"}))
    with pytest.raises(ValueError, match="malformed manifest"):
        read_dialogue_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{")
    with pytest.raises(ValueError, match="malformed manifest") as info:
        read_dialogue_manifest(tmp_path)
    assert "\n" not in str(info.value)


def test_corrupt_members_are_skipped_and_counted(tmp_path):
    good = [make_turn(1, 1), make_turn(2, 1), make_turn(3, 1)]
    tar = DeterministicTar(tmp_path / "sft-00000.tar")
    tar.add(f"{good[0].key}.json", good[0].to_json())
    tar.add("d000000009_r1.json", b"{not json at all")
    tar.add(f"{good[1].key}.json", good[1].to_json())
    missing = json.loads(good[2].to_json())
    del missing["question"]
    tar.add(f"{good[2].key}.json", json.dumps(missing).encode())
    tar.add("readme.txt", b"ignored: not a json member")
    digest = tar.close()
    write_dialogue_manifest(tmp_path, [{"path": "sft-00000.tar", "stage": "sft", "turns": 4, "places": 4, "sha256": digest}], {})
    bad = BadSampleLog()
    turns = read_turns(tmp_path, ["sft"], bad)
    assert turns == good[:2]
    assert bad.counts == {("sft-00000.tar", "bad_json"): 2}
    assert "not JSON" in bad.first_reason


def test_unreadable_shard_is_skipped_and_counted(tmp_path):
    write_corpus(tmp_path)
    (tmp_path / "sft-00001.tar").unlink()  # missing
    (tmp_path / "grpo-00000.tar").write_bytes(b"this is not a tar archive" * 40)  # garbage
    bad = BadSampleLog()
    turns = read_turns(tmp_path, ["sft", "grpo"], bad)
    assert turns == corpus_turns()["sft"][:4]  # the first sft shard still reads
    assert bad.total == 2 + 4  # the lost shards' turn counts
    assert {shard for shard, _ in bad.counts} == {"sft-00001.tar", "grpo-00000.tar"}


# ---- compact candidate sets ------------------------------------------------------------------------


class StubRetriever:
    """``embed_texts``: a fixed unit vector per text (unknown texts: a fixed other direction)."""

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table = table
        self.calls: list[list[str]] = []

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        return torch.stack([self.table[t] for t in texts])


def _unit(cos: float) -> torch.Tensor:
    """A unit vector in R^3 whose cosine with e_0 is ``cos``."""
    return torch.tensor([cos, math.sqrt(1 - cos * cos), 0.0])


# place ids of the gallery rows and each row's score with the query direction e_0
ROWS = [(1, 0.90), (1, 0.80), (2, 0.50), (2, 0.70), (3, 0.60), (4, 0.20), (5, 0.65)]


def stub_gallery() -> Gallery:
    return Gallery(
        embeddings=torch.stack([_unit(s) for _, s in ROWS]),
        place_ids=torch.tensor([p for p, _ in ROWS]),
        keys=[f"K{i}" for i in range(len(ROWS))],
        descriptions=[f"description of row {i}" for i in range(len(ROWS))],
        attributes=[{"row": i} for i in range(len(ROWS))],
    )


def test_compact_candidate_sets_hand_computed():
    gallery = stub_gallery()
    e0 = torch.tensor([1.0, 0.0, 0.0])
    retriever = StubRetriever({"target one": e0, "target three": e0})
    queries = [
        DialogueQuery(0, "vague one", Target(1, "target one", {})),
        DialogueQuery(1, "vague three", Target(3, "target three", {})),
    ]
    sets, roles = compact_candidate_sets(queries, gallery, retriever, num_hard_negatives=2, seed=0)
    # place 1: target = its first row 0, positive = its second row 1; by score the other places rank
    # row 3 (place 2, .70), row 6 (place 5, .65), row 4 (place 3, .60), row 2 (place 2 again, .50)...
    assert roles[0] == {"target": 0, "positive": 1, "negatives": [3, 6]}
    assert sorted(sets[0]) == [0, 1, 3, 6]
    # place 3 has one view (row 4): no separate positive; by score the other places rank row 0
    # (place 1, .90; its row 1 is skipped as the same place), then row 3 (place 2, .70)
    assert roles[1] == {"target": 4, "positive": 4, "negatives": [0, 3]}
    assert sorted(sets[1]) == [0, 3, 4]
    assert retriever.calls == [["target one", "target three"]]  # one batched encode
    # three negatives: place 2's second row (0.50) is never a second negative for the same place
    sets3, roles3 = compact_candidate_sets(queries[:1], gallery, retriever, num_hard_negatives=3)
    assert roles3[0]["negatives"] == [3, 6, 4]
    # asking for more negatives than there are other places takes every other place once
    _, roles_all = compact_candidate_sets(queries[:1], gallery, retriever, num_hard_negatives=9)
    assert roles_all[0]["negatives"] == [3, 6, 4, 5]


def test_compact_candidate_sets_order_is_a_seeded_shuffle():
    gallery = stub_gallery()
    e0 = torch.tensor([1.0, 0.0, 0.0])
    retriever = StubRetriever({"target one": e0})
    q = [DialogueQuery(0, "vague", Target(1, "target one", {}))]
    a, _ = compact_candidate_sets(q, gallery, retriever, 3, seed=5)
    b, _ = compact_candidate_sets(q, gallery, retriever, 3, seed=5)
    assert a == b
    orders = {tuple(compact_candidate_sets(q, gallery, retriever, 3, seed=s)[0][0]) for s in range(8)}
    assert all(sorted(o) == [0, 1, 3, 4, 6] for o in orders)
    assert len(orders) > 1  # the order is shuffled, not the score order
    with pytest.raises(ValueError, match="place 99"):
        compact_candidate_sets([DialogueQuery(0, "v", Target(99, "target one", {}))], gallery, retriever, 2)


# ---- generation on a tiny SynthCities world ---------------------------------------------------------


def attribute_text(attrs: dict) -> str:
    return " ".join(answer_sentence(s, v, attrs) for s, v in attrs.items())


@pytest.fixture(scope="module")
def tiny_world():
    world = make_world(SynthCitiesConfig(num_cities=2, places_per_city=4, views_per_place=2, seed=4))
    records = []
    for p in world.places:
        assert set(SLOT_QUESTIONS) <= set(p.attributes)
        for v in range(2):
            # the second view's description leaves a few slots out, so the positive reads differently
            attrs = p.attributes if v == 0 else {k: x for k, x in p.attributes.items() if k not in ("house_number", "tree", "bench")}
            records.append(PlaceRecord(
                key=make_key(p.city, p.place_in_city, v), place_id=p.place_id, city=p.city, lat=p.lat, lon=p.lon, view=v,
                initial_caption=f"A {p.attributes['facade_color']} building.", description=attribute_text(attrs),
                split="train", attributes=p.attributes,
            ))
    retriever = LexicalRetriever()
    gallery = Gallery.from_records(records, retriever.embed_texts([r.description for r in records]))
    return records, gallery, retriever


class CountingTeacher:
    def __init__(self) -> None:
        self.inner = OracleTeacherQuestioner()
        self.requests = 0

    def ask(self, requests):
        self.requests += len(requests)
        return self.inner.ask(requests)


class FailingOnceTeacher(CountingTeacher):
    """Fails round 2 of the dialogues of ``fail_places`` (an API error after the client's retries)."""

    def __init__(self, fail_places: set[int]) -> None:
        super().__init__()
        self.fail_places = fail_places

    def ask(self, requests):
        out = super().ask(requests)
        return [Question(text="", ok=False, error="api_error:APITimeoutError") if r.round == 2 and r.query_id in self.fail_places else q
                for r, q in zip(requests, out)]


def test_a_rerun_redoes_only_the_dialogues_with_a_failed_turn(tiny_world, tmp_path):
    records, gallery, retriever = tiny_world
    config = CorpusConfig(rounds=3, num_hard_negatives=2, chunk_places=3)
    reference, _ = build_split_turns(records, gallery, retriever, CountingTeacher(), OracleAnswerer(), config, tmp_path / "ref", "train")
    flaky = FailingOnceTeacher(fail_places={1, 4})  # query ids: the 2nd place of chunks 0 and 1
    turns, totals = build_split_turns(records, gallery, retriever, flaky, OracleAnswerer(), config, tmp_path / "w", "train")
    assert totals["failed_turns"] == 2 and totals["turns"] == 8 * 3 - 2
    failed_places = {t.place_id for t in reference} - {t.place_id for t in turns if t.round == 2}
    assert len(failed_places) == 2

    good = CountingTeacher()
    redone, totals2 = build_split_turns(records, gallery, retriever, good, OracleAnswerer(), config, tmp_path / "w", "train")
    assert good.requests == 2 * 3  # the two dialogues, whole; nothing else asked again
    assert totals2["dialogues_redone"] == 2 and totals2["failed_turns"] == 0 and totals2["turns"] == 8 * 3
    assert [asdict(t) for t in redone] == [asdict(t) for t in reference]  # same turns, same order
    third = CountingTeacher()
    build_split_turns(records, gallery, retriever, third, OracleAnswerer(), config, tmp_path / "w", "train")
    assert third.requests == 0  # the repaired chunks were written back

    no_retry = CountingTeacher()
    build_split_turns(records, gallery, retriever, FailingOnceTeacher({0}), OracleAnswerer(), config, tmp_path / "x", "train")
    _, totals4 = build_split_turns(records, gallery, retriever, no_retry, OracleAnswerer(), replace(config, retry_failed=False), tmp_path / "x", "train")
    assert no_retry.requests == 0 and totals4["failed_turns"] == 1


def test_generate_turns_records(tiny_world):
    records, gallery, retriever = tiny_world
    from dlgpr.dialogue.evaluation import build_queries

    queries = build_queries(records)
    assert len(queries) == 8
    config = CorpusConfig(rounds=3, num_hard_negatives=2, w_sa=0.4, w_rid=0.6, sa_alpha=0.5)
    turns, stats = generate_turns(queries, gallery, retriever, OracleTeacherQuestioner(), OracleAnswerer(), config)
    assert stats == {"dialogues": 8, "failed_turns": 0, "turns": 24, "failed_by_place": {}}
    assert len(turns) == 24
    sets, roles = compact_candidate_sets(queries, gallery, retriever, 2, config.seed)
    by_place: dict[int, list[DialogueTurnRecord]] = {}
    for t in turns:
        by_place.setdefault(t.place_id, []).append(t)
    for i, q in enumerate(queries):
        ts = by_place[q.target.place_id]
        assert [t.round for t in ts] == [1, 2, 3]
        assert [t.key for t in ts] == [turn_key(q.target.place_id, r) for r in (1, 2, 3)]
        for j, t in enumerate(ts):
            assert t.history == [{"question": u.question, "answer": u.answer} for u in ts[:j]]
            assert t.initial_description == q.initial_description
            assert t.candidates == [gallery.keys[r] for r in sets[i]]
            assert len(t.candidates) == 4  # target, positive view, 2 hard negatives
            assert t.question.endswith("?") and t.think.startswith("1. History")
            assert t.answer  # the oracle user answered from the target's attributes
            assert t.stage == ""
            for v in (t.prg, t.sa, t.ddi):
                assert math.isfinite(v)
            assert -1.0 - 1e-6 <= t.prg <= 1.0 + 1e-6
            assert t.ddi == pytest.approx(0.4 * t.sa + 0.6 * (1 - t.prg), abs=1e-6)
        # the teacher's questions are all different slots
        assert len({t.question for t in ts}) == 3
        # SA = alpha * mean cos(target, negatives) + (1 - alpha) * (1 - cos(target, positive)), by the text encoder
        r = roles[i]
        emb = retriever.embed_texts([gallery.descriptions[r["target"]], gallery.descriptions[r["positive"]]]
                                    + [gallery.descriptions[n] for n in r["negatives"]])
        cos = emb[0] @ emb.T
        want_sa = 0.5 * float(cos[2:].mean()) + 0.5 * (1 - float(cos[1]))
        assert all(t.sa == pytest.approx(want_sa, abs=1e-5) for t in ts)
        assert want_sa > 0
        # PRG of round 1: the target's positions over the whole gallery before and after the first answer
        before = retriever.embed_texts([compose_query(q.initial_description, [])])
        after = retriever.embed_texts([compose_query(q.initial_description, [Turn(ts[0].question, ts[0].answer)])])
        pos_b, n_pos = gallery_positive_ranks(before, gallery, [q.target.place_id])
        pos_a, _ = gallery_positive_ranks(after, gallery, [q.target.place_id])
        assert ts[0].prg == pytest.approx(float(prg_metric(pos_b, pos_a, n_pos)[0]), abs=1e-6)
    assert any(t.prg > 0 for t in turns)  # oracle answers do help the retriever


def test_build_split_turns_resumes_from_chunks(tiny_world, tmp_path):
    records, gallery, retriever = tiny_world
    config = CorpusConfig(rounds=2, num_hard_negatives=2, chunk_places=3)
    teacher = CountingTeacher()
    turns, totals = build_split_turns(records, gallery, retriever, teacher, OracleAnswerer(), config, tmp_path, "train")
    assert totals == {"dialogues": 8, "turns": 16, "failed_turns": 0, "chunks_resumed": 0, "dialogues_redone": 0}
    assert teacher.requests == 8 * 2  # one request per place and round
    chunks = sorted(tmp_path.glob("train-*.jsonl"))
    assert len(chunks) == 3  # 8 places in chunks of 3, 3, 2
    assert not list(tmp_path.glob("*.tmp"))

    # a second build reads every chunk back: the teacher is not asked again, the turns are identical
    again = CountingTeacher()
    turns2, totals2 = build_split_turns(records, gallery, retriever, again, OracleAnswerer(), config, tmp_path, "train")
    assert again.requests == 0
    assert turns2 == turns
    assert totals2 == {**totals, "chunks_resumed": 3}

    # losing one chunk regenerates that chunk only (its 3 places x 2 rounds)
    chunks[1].unlink()
    third = CountingTeacher()
    turns3, totals3 = build_split_turns(records, gallery, retriever, third, OracleAnswerer(), config, tmp_path, "train")
    assert third.requests == 3 * 2
    assert turns3 == turns
    assert totals3["chunks_resumed"] == 2
    assert chunks[1].is_file()

    # another set of places (limit) does not reuse these chunks
    fourth = CountingTeacher()
    turns4, totals4 = build_split_turns(records, gallery, retriever, fourth, OracleAnswerer(), config, tmp_path, "train", limit=2)
    assert fourth.requests == 2 * 2 and totals4["chunks_resumed"] == 0
    assert [asdict(t) for t in turns4] == [asdict(t) for t in turns[:4]]

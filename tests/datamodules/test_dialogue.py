"""Dialogue-turn data for DQ-Pilot: curriculum sampler, SFT collation (text and Qwen2.5-VL), the datamodule."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from datamodules.dialogue import IGNORE_INDEX, CurriculumConfig, CurriculumSampler, DialogueDataModule, SFTCollator, TurnExample
from dlgpr.data.turns import DialogueTurnRecord, QuestionRequest, Target, turn_key, write_dialogue_manifest, write_turn_shards
from dlgpr.dialogue.hf import HFQuestioner, HFQuestionerConfig
from dlgpr.models.reply_format import format_question
from dlgpr.models.prompting import PromptConfig, questioner_messages
from dlgpr.models.questioner import FORMAT_TAGS, train_corpus_tokenizer
from dlgpr.testing.tiny_models import CORPUS, tiny_causal_lm, tiny_qwen25vl, tiny_requests, tiny_tokenizer
from tests.helpers.shards import WORDS, make_tiny_dataset

# ---- the curriculum sampler -------------------------------------------------------------------------

DDI = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.6]
EASY_TO_HARD = [1, 5, 3, 0, 6, 4, 2]  # indices by ascending DDI (no ties)


def test_easy_to_hard_order_and_epoch_independence():
    s = CurriculumSampler(DDI, "easy_to_hard", seed=0)
    assert list(s) == EASY_TO_HARD
    assert len(s) == 7
    s.set_epoch(3)
    assert list(s) == EASY_TO_HARD  # no ties: the order does not move with the epoch
    assert isinstance(s, DistributedSampler)  # Lightning keeps a DistributedSampler and calls set_epoch
    assert s.shuffle is False and s.drop_last is True


def test_random_and_buckets_follow_seed_and_epoch():
    ddi = [i / 12 for i in range(12)][::-1]  # index 11 is easiest
    for mode in ("random", "buckets"):
        a = CurriculumSampler(ddi, mode, seed=7, num_buckets=3)
        b = CurriculumSampler(ddi, mode, seed=7, num_buckets=3)
        e0 = list(a)
        assert e0 == list(b)  # deterministic for a seed and epoch
        assert sorted(e0) == list(range(12))
        a.set_epoch(1)
        b.set_epoch(1)
        assert list(a) != e0  # a new epoch reorders
        assert list(a) == list(b)
        assert list(CurriculumSampler(ddi, mode, seed=8, num_buckets=3)) != e0
        if mode == "buckets":
            # three buckets of 4 from easy to hard: indices 11..8, then 7..4, then 3..0, each shuffled
            for order in (e0, list(a)):
                assert [set(order[k : k + 4]) for k in (0, 4, 8)] == [{8, 9, 10, 11}, {4, 5, 6, 7}, {0, 1, 2, 3}]


@pytest.mark.parametrize("mode", ["easy_to_hard", "buckets", "random"])
def test_ranks_get_disjoint_equal_slices(mode):
    ranks = [CurriculumSampler(DDI, mode, seed=2, rank=r, world_size=2) for r in (0, 1)]
    full = list(CurriculumSampler(DDI, mode, seed=2))
    parts = [list(s) for s in ranks]
    assert [len(p) for p in parts] == [3, 3] and [len(s) for s in ranks] == [3, 3]
    assert not set(parts[0]) & set(parts[1])
    # every index except the tail of the order that would leave the ranks unequal (7 = 2 * 3 + 1)
    assert set(parts[0]) | set(parts[1]) == set(full[:6])
    assert parts[0] == full[0:6:2] and parts[1] == full[1:6:2]  # each rank walks the same curriculum
    if mode == "easy_to_hard":
        assert parts == [[1, 3, 6], [5, 0, 4]] and full[6] == 2  # the hardest turn is dropped


# ---- SFT collation ----------------------------------------------------------------------------------


def as_example(req: QuestionRequest, think: str, question: str) -> TurnExample:
    turn = DialogueTurnRecord(
        key=turn_key(req.query_id, req.round), place_id=req.query_id, round=req.round, initial_description=req.initial_description,
        history=[{"question": t.question, "answer": t.answer} for t in req.history], candidates=[c.key for c in req.candidates],
        think=think, question=question, answer="The door is red.", prg=0.5, sa=0.1, ddi=0.3,
    )
    return TurnExample(turn=turn, request=req, target=Target(req.query_id, "target", {}))


def examples(n: int = 3, with_images: bool = False) -> list[TurnExample]:
    return [
        as_example(r, f"1. History: nothing yet.\n2. Candidates: {2 + i} places differ in colour.", f"What colour is door {i}?")
        for i, r in enumerate(tiny_requests(n, with_images=with_images))
    ]


def generation_prompt(questioner: HFQuestioner, ex: TurnExample, max_description_words: int) -> list[int]:
    """The prompt ids HFQuestioner generates from for ``ex`` (padding removed)."""
    msgs = questioner_messages(ex.request, with_images=questioner.with_images, max_description_words=max_description_words)
    enc = questioner.encode([msgs])
    return enc["input_ids"][0][enc["attention_mask"][0].bool()].tolist()


def check_rows(batch, tok, exs, prompts):
    """Row i is prompt_i + completion_i + eos, right-padded; labels only on completion + eos."""
    for i, (ex, prompt) in enumerate(zip(exs, prompts)):
        completion = tok(ex.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(prompt) + len(completion)
        assert batch["input_ids"][i, :n].tolist() == prompt + completion
        assert batch["input_ids"][i, n:].eq(tok.pad_token_id).all()
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        labels = batch["labels"][i]
        assert labels[: len(prompt)].eq(IGNORE_INDEX).all() and labels[n:].eq(IGNORE_INDEX).all()
        assert labels[len(prompt) : n].tolist() == completion
        assert tok.decode(labels[labels != IGNORE_INDEX]) == ex.completion + tok.eos_token


def test_sft_collator_text_labels_only_the_completion():
    tok = tiny_tokenizer()
    exs = examples(3)
    batch = SFTCollator(tok, with_images=False, prompt=PromptConfig(max_prompt_tokens=4096, max_description_words=60))(exs)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == batch["labels"].shape
    completion = exs[0].completion
    assert completion.startswith("<think>1. History") and completion.endswith("</think><question>What colour is door 0?</question>")
    qa = HFQuestioner(tiny_causal_lm(tok), tok, HFQuestionerConfig(model="tiny", max_description_words=60, max_prompt_tokens=4096))
    prompts = [generation_prompt(qa, ex, 60) for ex in exs]
    assert len({len(p) for p in prompts}) == 3  # varied lengths, so the batch is padded
    check_rows(batch, tok, exs, prompts)
    # the prompt is the chat template's text, generation prompt last
    assert tok.decode(prompts[0]).endswith("Write your reasoning and your question.<|im_end|>\n<|im_start|>assistant\n")


def test_sft_collator_cuts_long_prompts_on_the_left_like_generation():
    tok = tiny_tokenizer()
    exs = examples(3)
    full = SFTCollator(tok, with_images=False, prompt=PromptConfig(max_prompt_tokens=4096))
    lengths = []
    for ex in exs:
        b = full([ex])
        lengths.append(int((b["labels"][0] == IGNORE_INDEX).sum()))  # the prompt tokens
    assert full.num_truncated == 0
    limit = sorted(lengths)[1]  # one prompt is shorter, one as long, one longer than the limit
    collator = SFTCollator(tok, with_images=False, prompt=PromptConfig(max_prompt_tokens=limit))
    batch = collator(exs)
    assert collator.num_truncated == 1
    qa = HFQuestioner(tiny_causal_lm(tok), tok, HFQuestionerConfig(model="tiny", max_description_words=60, max_prompt_tokens=limit))
    prompts = [generation_prompt(qa, ex, 60) for ex in exs]
    assert qa.num_truncated == 1
    assert sorted(len(p) for p in prompts) == [min(lengths), limit, limit]
    check_rows(batch, tok, exs, prompts)
    longest = lengths.index(max(lengths))
    untruncated = full([exs[longest]])["input_ids"][0, : max(lengths)].tolist()
    assert prompts[longest] == untruncated[-limit:]  # the left end is cut, the instruction stays


def test_sft_collator_fallback_template_matches_generation():
    tok = tiny_tokenizer(chat_template=None)  # a base model: the plain-text fallback template
    exs = examples(2)
    batch = SFTCollator(tok, with_images=False, prompt=PromptConfig(max_description_words=5))(exs)
    qa = HFQuestioner(tiny_causal_lm(tok), tok, HFQuestionerConfig(model="tiny", max_description_words=5))
    prompts = [generation_prompt(qa, ex, 5) for ex in exs]
    assert tok.decode(prompts[0]).startswith("System: You help") and tok.decode(prompts[0]).endswith("Assistant:")
    check_rows(batch, tok, exs, prompts)


def test_sft_collator_with_the_corpus_tokenizer():
    exs = examples(2)
    tok = train_corpus_tokenizer(list(CORPUS) + [ex.completion for ex in exs], vocab_size=600)
    for tag in FORMAT_TAGS:
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1
    batch = SFTCollator(tok, with_images=False)(exs)
    for i, ex in enumerate(exs):
        labels = batch["labels"][i]
        labelled = labels[labels != IGNORE_INDEX]
        # the tags are ordinary tokens: skipping special tokens drops only the end-of-turn token
        assert tok.decode(labelled, skip_special_tokens=True) == ex.completion
        assert tok.decode(labelled) == ex.completion + "<|im_end|>"
        for tag in FORMAT_TAGS:
            assert tok.convert_tokens_to_ids(tag) in labelled.tolist()
    qa = HFQuestioner(tiny_causal_lm(tok), tok, HFQuestionerConfig(model="tiny", max_description_words=60))
    check_rows(batch, tok, exs, [generation_prompt(qa, ex, 60) for ex in exs])


@pytest.fixture(scope="module")
def tiny_vlm():
    return tiny_qwen25vl()


def test_sft_collator_vision_language(tiny_vlm):
    model, processor = tiny_vlm
    tok = processor.tokenizer
    exs = examples(2, with_images=True)
    batch = SFTCollator(processor, with_images=True)(exs)
    assert {"input_ids", "attention_mask", "labels", "pixel_values", "image_grid_thw"} <= set(batch)
    # 2 turns x 2 candidate images; a 56x56 image is 4x4 patches of 14 px (1 x 4 x 4 grid), 4 tokens after the 2x2 merge
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 4
    assert batch["pixel_values"].shape[0] == 4 * 16
    image_token = processor.image_token_id
    assert (batch["input_ids"] == image_token).sum(dim=1).tolist() == [8, 8]
    assert not ((batch["labels"] == image_token).any())
    for key, value in batch.items():
        if key in ("pixel_values", "image_grid_thw"):
            continue
        assert value.shape == batch["input_ids"].shape, key  # token-aligned tensors cover prompt + completion
    qa = HFQuestioner(model, processor, HFQuestionerConfig(model="tiny", max_description_words=60))
    assert qa.with_images
    prompts = [generation_prompt(qa, ex, 60) for ex in exs]
    check_rows(batch, tok, exs, prompts)
    # the batch is what the SFT step feeds the model: a finite loss over the completion tokens
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.loss)


def test_sft_collator_vision_language_truncation_matches_generation(tiny_vlm):
    model, processor = tiny_vlm
    exs = examples(2, with_images=True)
    limit = 120  # shorter than the prompts: generation cuts the system prompt, never an image placeholder
    collator = SFTCollator(processor, with_images=True, prompt=PromptConfig(max_prompt_tokens=limit))
    batch = collator(exs)
    qa = HFQuestioner(model, processor, HFQuestionerConfig(model="tiny", max_description_words=60, max_prompt_tokens=limit))
    prompts = [generation_prompt(qa, ex, 60) for ex in exs]
    assert qa.num_truncated == 2 and collator.num_truncated == 2
    check_rows(batch, processor.tokenizer, exs, prompts)
    assert (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist() == [8, 8]
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


# ---- the datamodule ---------------------------------------------------------------------------------

SFT_DDI = {0: 0.6, 1: 0.1, 2: 0.5, 3: 0.2, 4: 0.4, 5: 0.3}  # Alpha places 0..5 (place_id = place)


def corpus_turn(place: int, stage: str, ddi: float, candidates: list[str] | None = None, place_id: int | None = None) -> DialogueTurnRecord:
    return DialogueTurnRecord(
        key=turn_key(place if place_id is None else place_id, 2), place_id=place if place_id is None else place_id, round=2,
        initial_description=f"a building {place}", history=[{"question": "What colour is the facade?", "answer": "It is bright."}],
        candidates=candidates or [f"Alpha_{place:07d}_0", f"Alpha_{place:07d}_1", f"Beta_{place + 1:07d}_0"],
        think=f"Reasoning about place {place}.", question=f"Is it house number {place}?", answer=f"The house number is {place}.",
        prg=0.2, sa=0.1, ddi=ddi, stage=stage,
    )


@pytest.fixture
def dialogue_corpus(tmp_path):
    places = tmp_path / "places"
    make_tiny_dataset(places)  # Alpha/Beta, train places 0..11, val 12..15, test 16..19, 2 views each
    sft = [corpus_turn(p, "sft", d) for p, d in SFT_DDI.items()]
    sft.append(corpus_turn(6, "sft", 0.05, candidates=["Alpha_0000006_0", "Gamma_0000001_0"]))  # unknown candidate
    sft.append(corpus_turn(7, "sft", 0.06, place_id=777))  # unknown target place
    grpo = [corpus_turn(p, "grpo", 0.8) for p in (8, 9)]
    val = [corpus_turn(p, "val", 0.5) for p in (14, 12, 13)]
    corpus = tmp_path / "corpus"
    shards = write_turn_shards(corpus, "sft", sorted(sft, key=lambda t: t.key), 3)
    shards += write_turn_shards(corpus, "grpo", grpo, 3) + write_turn_shards(corpus, "val", sorted(val, key=lambda t: t.key), 3)
    write_dialogue_manifest(corpus, shards, {})
    return corpus, places


def datamodule(corpus, places, **kw) -> DialogueDataModule:
    args = dict(data_dir=str(corpus), place_data_dir=str(places), train_stages=["sft"], val_stage="val", batch_size=2,
                val_batch_size=2, curriculum=CurriculumConfig(seed=0))
    args.update(kw)
    return DialogueDataModule(**args)


def test_datamodule_sft_batches(dialogue_corpus):
    corpus, places = dialogue_corpus
    tok = tiny_tokenizer()
    dm = datamodule(corpus, places)
    dm.set_processor(tok, with_images=False, mode="sft")
    batches = list(dm.train_dataloader())
    assert len(batches) == 3  # 6 usable turns, 2 per batch
    assert dm.bad.by_kind() == {"unknown_place": 2}  # skipped and counted, not raised
    questions = []
    for b in batches:
        assert set(b) == {"input_ids", "attention_mask", "labels"}
        assert all(isinstance(v, torch.Tensor) and v.shape[0] == 2 for v in b.values())
        for row in b["labels"]:
            text = tok.decode(row[row != IGNORE_INDEX])
            assert text.startswith("<think>Reasoning about place") and text.endswith("</question><|im_end|>")
            questions.append(int(text.split("house number ")[1].split("?")[0]))
    assert questions == [1, 3, 5, 4, 2, 0]  # easy to hard by DDI (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    val = list(dm.val_dataloader())
    assert [b["input_ids"].shape[0] for b in val] == [2, 1]


def test_datamodule_sft_builds_prompts_with_its_prompt_config(dialogue_corpus):
    corpus, places = dialogue_corpus
    tok = tiny_tokenizer()
    # python -m dlgpr links the module's prompt config here (tests/modules/test_dqpilot_cli.py)
    dm = datamodule(corpus, places, prompt=PromptConfig(max_prompt_tokens=30, max_description_words=5))
    dm.set_processor(tok, False, "sft")
    collate = dm.train_dataloader().collate_fn
    assert collate.prompt == PromptConfig(max_prompt_tokens=30, max_description_words=5)
    batch = next(iter(dm.train_dataloader()))
    assert (batch["labels"][0] == IGNORE_INDEX).sum() >= 30


def test_datamodule_prompt_examples(dialogue_corpus):
    corpus, places = dialogue_corpus
    dm = datamodule(corpus, places, max_val_turns=2)
    dm.set_processor(None, with_images=False, mode="prompts")
    batches = list(dm.train_dataloader())
    assert [[ex.turn.place_id for ex in b] for b in batches] == [[1, 3], [5, 4], [2, 0]]
    for b in batches:
        for ex in b:
            assert isinstance(ex, TurnExample)
            p = ex.turn.place_id
            req = ex.request
            assert [c.key for c in req.candidates] == ex.turn.candidates
            c = (p * 7) % len(WORDS)
            c_beta = ((p + 1) * 7 + 1) % len(WORDS)
            assert [c.description for c in req.candidates] == [
                f"a {WORDS[c]} building number {p} in Alpha, view 0",
                f"a {WORDS[c]} building number {p} in Alpha, view 1",
                f"a {WORDS[c_beta]} building number {p + 1} in Beta, view 0",
            ]
            assert [c.place_id for c in req.candidates] == [p, p, 10**5 + p + 1]
            assert all(c.image is None for c in req.candidates)
            assert ex.target == Target(p, f"a {WORDS[c]} building number {p} in Alpha, view 0", {"facade_color": WORDS[c], "house_number": p})
            assert (req.query_id, req.round, req.initial_description) == (p, 2, f"a building {p}")
            assert [(t.question, t.answer) for t in req.history] == [("What colour is the facade?", "It is bright.")]
            assert ex.completion == format_question(f"Reasoning about place {p}.", f"Is it house number {p}?")
    assert dm.bad.total == 2
    # validation: the first max_val_turns turns in key order, as prompts
    val = list(dm.val_dataloader())
    assert [[ex.turn.place_id for ex in b] for b in val] == [[12, 13]]


def test_datamodule_prompts_with_images_and_stages(dialogue_corpus):
    corpus, places = dialogue_corpus
    dm = datamodule(corpus, places, train_stages=["sft", "grpo"], val_stage=None, batch_size=8, curriculum=CurriculumConfig("random", seed=0))
    dm.set_processor(None, with_images=True, mode="prompts")
    (batch,) = list(dm.train_dataloader())
    assert sorted(ex.turn.place_id for ex in batch) == [0, 1, 2, 3, 4, 5, 8, 9]
    img = batch[0].request.candidates[0].image()
    assert isinstance(img, Image.Image) and img.size == (32, 32) and img.mode == "RGB"
    assert list(dm.val_dataloader()) == []


def test_datamodule_errors(dialogue_corpus, tmp_path):
    corpus, places = dialogue_corpus
    dm = datamodule(corpus, places)
    with pytest.raises(ValueError, match="mode"):
        dm.set_processor(None, False, "grpo")
    with pytest.raises(RuntimeError, match="set_processor"):
        dm.train_dataloader()  # sft batches need a tokenizer
    with pytest.raises(ValueError, match="curriculum"):
        datamodule(corpus, places, curriculum=CurriculumConfig("hard_to_easy"))
    empty = tmp_path / "empty"
    write_dialogue_manifest(empty, write_turn_shards(empty, "sft", [corpus_turn(1, "sft", 0.1, place_id=555)], 3), {})
    dm = datamodule(empty, places, val_stage=None)
    dm.set_processor(None, False, "prompts")
    with pytest.raises(ValueError, match="no usable turn"):
        dm.train_dataloader()

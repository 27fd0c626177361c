"""DQ-Pilot training modules (SFTModule, GRPOModule) on tiny random Qwen2 / Qwen2.5-VL policies.

Every run goes through a real Lightning ``Trainer`` on CPU in float32 over a tiny dialogue corpus
written with the corpus writers, on top of a tiny place dataset (tests/helpers/shards.py). What is
checked is what training must guarantee: LoRA moves the adapter and never the base, checkpoints
hold the adapter only, GRPO's log-probs are the sampling policy's, its reference stays frozen,
bad rewards abort a step without touching the weights, and exports load back to the same model.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from datamodules.dialogue import CurriculumConfig, DialogueDataModule, TurnExample
from dlgpr.data.reader import iter_records
from dlgpr.data.schema import make_key
from dlgpr.data.shards import read_manifest
from dlgpr.data.turns import DialogueTurnRecord, write_dialogue_manifest, write_turn_shards
from dlgpr.models.prompting import PromptConfig, placeholder_token_ids
from dlgpr.models.questioner import (
    POLICY_FILE,
    LoRAConfig,
    PolicyConfig,
    ScratchLMConfig,
    is_peft,
    load_policy,
    train_corpus_tokenizer,
)
from dlgpr.modules.dqpilot import GRPOConfig, GRPOModule, Rollout, SFTModule
from dlgpr.modules.optim import OptimConfig
from dlgpr.rewards import AnswererFailing, FormatReward, WeightedReward
from dlgpr.testing.tiny_models import save_tiny_policy
from tests.helpers.shards import make_tiny_dataset

LORA = LoRAConfig(r=4, alpha=8, dropout=0.0)
NO_WARMUP = OptimConfig(weight_decay=0.0, warmup_steps=0)
PROMPT = PromptConfig(max_description_words=12)  # short prompts


# ---- corpus and policies ------------------------------------------------------------------------


def _turn(place_id: int, round_: int, candidates: list[str], stage: str, ddi: float) -> DialogueTurnRecord:
    history = [{"question": "What colour is the facade?", "answer": "The facade is red."}] * (round_ - 1)
    return DialogueTurnRecord(
        key=f"d{place_id:09d}_r{round_}", place_id=place_id, round=round_,
        initial_description="a building near a shop" + " with a sign" * place_id, history=history, candidates=candidates,
        think="The candidates differ in facade colour.", question="What colour is the facade of the building?",
        answer="The facade is red.", prg=0.5, sa=0.2, ddi=ddi, stage=stage,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """4 train places (ids 0-3, 2 views) and 2 val places (4-5) of one city, and a corpus over them:
    sft and grpo turns on the train places (2 candidates each: the target's view 0, another
    place's view 1), val turns on the val places. Prompts differ in length (batches need padding)."""
    root = tmp_path_factory.mktemp("dqpilot")
    make_tiny_dataset(root / "places", places={"train": 4, "val": 2}, cities=("Alpha",))
    manifest = read_manifest(root / "places")
    keys = {r.key: r.place_id for s in manifest.shards for r in iter_records(root / "places" / s.path)}

    def cands(p: int, other: int) -> list[str]:
        out = [make_key("Alpha", p, 0), make_key("Alpha", other, 1)]
        assert all(k in keys for k in out) and keys[out[0]] == p
        return out

    dialogue = root / "dialogues"
    shards = write_turn_shards(dialogue, "sft", [_turn(p, 1 + p % 2, cands(p, (p + 1) % 4), "sft", 0.1 * p) for p in range(4)], 8)
    shards += write_turn_shards(dialogue, "grpo", [_turn(p, 2 - p % 2, cands(p, (p + 2) % 4), "grpo", 0.1 * p) for p in range(4)], 8)
    shards += write_turn_shards(dialogue, "val", [_turn(p, 1, cands(p, 9 - p), "val", 0.5) for p in (4, 5)], 8)
    write_dialogue_manifest(dialogue, shards, {"generator": "tests"})
    return {"places": root / "places", "dialogues": dialogue, "root": root}


@pytest.fixture(scope="module")
def text_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 causal LM + its tokenizer, saved like a Hugging Face checkpoint."""
    return save_tiny_policy(tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="module")
def vlm_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL + its processor (loads as a VLM through AutoProcessor)."""
    return save_tiny_policy(tmp_path_factory.mktemp("qwen25vl"), vision=True)


def datamodule(corpus: dict[str, Path], stage: str, val: bool = False, batch_size: int = 2) -> DialogueDataModule:
    return DialogueDataModule(
        data_dir=str(corpus["dialogues"]), place_data_dir=str(corpus["places"]), train_stages=[stage],
        val_stage="val" if val else None, batch_size=batch_size, val_batch_size=2, prompt=PROMPT, curriculum=CurriculumConfig(seed=0),
    )


def prompts(module: Any, corpus: dict[str, Path], stage: str = "grpo") -> list[TurnExample]:
    """The corpus turns as the module sees them (images shown when the policy is a VLM)."""
    dm = datamodule(corpus, stage)
    dm.set_processor(module.processor, module.with_images, "prompts")
    dm.load()
    return dm.train_examples


def fit(module: Any, dm: DialogueDataModule, steps: int = -1, **kwargs: Any) -> Trainer:
    trainer = Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False, **kwargs,
    )
    trainer.fit(module, datamodule=dm)
    return trainer


def snapshot(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(adapter, base) parameters by name, cloned."""
    adapter = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    return adapter, base


def assert_adapter_trained_base_frozen(model: torch.nn.Module, before: tuple[dict, dict]) -> None:
    adapter, base = before
    assert adapter and base
    now = dict(model.named_parameters())
    assert all(now[n].requires_grad for n in adapter) and not any(now[n].requires_grad for n in base)
    for n, p in base.items():
        assert torch.equal(now[n].detach(), p), f"base weight {n} changed"
    # lora_B starts at zero, so every adapted projection must have moved away from it
    lora_b = [n for n in adapter if "lora_B" in n]
    assert lora_b and all(not torch.equal(now[n].detach(), adapter[n]) for n in lora_b), "an adapter did not train"


def lm_logits(model: torch.nn.Module, tokenizer: Any, text: str = "<think>red</think><question>What colour?</question>") -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**ids).logits


def json_kind(export_dir: Path) -> str:
    return json.loads((export_dir / POLICY_FILE).read_text())["kind"]


class LengthReward:
    """Deterministic, and different across a group of sampled completions."""

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]:
        return [len(c) / 100 for c in completions]


def length_and_format() -> list[WeightedReward]:
    return [WeightedReward("length", LengthReward()), WeightedReward("format", FormatReward(), 0.5)]


def grpo_module(policy: Path, tmp_path: Path, rewards: list[WeightedReward] | None = None, lora: LoRAConfig | None = LORA,
                group_size: int = 4, **grpo: Any) -> GRPOModule:
    seed_everything(0)
    return GRPOModule(
        PolicyConfig(model=str(policy)), rewards=rewards or length_and_format(),
        grpo=GRPOConfig(group_size=group_size, max_new_tokens=8, **grpo), lora=lora, lr=1e-3, optim=NO_WARMUP,
        prompt=PROMPT, export_dir=str(tmp_path / "export"),
    )


def test_grpo_refuses_rewards_under_which_a_failed_reply_beats_a_question(text_policy: Path, tmp_path: Path) -> None:
    from dlgpr.ranking import Gallery
    from dlgpr.rewards import RetrievalGainReward

    gallery = Gallery(torch.eye(2), torch.tensor([0, 1]), ["a", "b"], ["a", "b"], [{}, {}])
    prg = RetrievalGainReward.from_parts(None, gallery)  # type: ignore[arg-type]  (never called)
    with pytest.raises(ValueError, match="failed reply can score as much"):
        grpo_module(text_policy, tmp_path, rewards=[WeightedReward("prg", prg, 1.0), WeightedReward("format", FormatReward(), -1.0)])


# ---- SFT ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sft_text_run(corpus: dict[str, Path], text_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """4 SFT steps with LoRA on the tiny Qwen2 (2 epochs of 2 batches, validation after each)."""
    tmp = tmp_path_factory.mktemp("sft_text")
    seed_everything(0)
    module = SFTModule(PolicyConfig(model=str(text_policy)), lora=LORA, lr=1e-2, optim=NO_WARMUP, prompt=PROMPT,
                       export_dir=str(tmp / "policy"))
    before = snapshot(module.model)
    modes = TrainModes()
    trainer = fit(module, datamodule(corpus, "sft", val=True), steps=4, callbacks=[modes])
    return {"module": module, "trainer": trainer, "before": before, "tmp": tmp, "modes": modes.seen}


class TrainModes(Callback):
    """Whether every submodule of the policy (LoRA dropout included) is in train mode at each training batch."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.seen.append(all(m.training for m in pl_module.model.modules()))


def test_sft_with_lora_trains_the_adapter_only(sft_text_run: dict[str, Any]) -> None:
    module, trainer = sft_text_run["module"], sft_text_run["trainer"]
    assert trainer.global_step == 4 and is_peft(module.model)
    assert_adapter_trained_base_frozen(module.model, sft_text_run["before"])
    # from_pretrained hands over an eval-mode model; training must not run it that way (dropout off),
    # also after the validation that runs between the epochs
    assert sft_text_run["modes"] == [True] * 4
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"])) and math.isfinite(float(metrics["val/loss"]))
    # the run ends by exporting the adapter where export_dir says
    assert json_kind(sft_text_run["tmp"] / "policy") == "adapter"


def test_sft_checkpoint_holds_the_adapter_only(sft_text_run: dict[str, Any], text_policy: Path, tmp_path: Path) -> None:
    module, trainer = sft_text_run["module"], sft_text_run["trainer"]
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    trained = {f"model.{n}": p for n, p in module.model.named_parameters() if p.requires_grad}
    assert set(state) == set(trained) and all("lora_" in k for k in state)
    # a fresh module (same base, new adapter) resumes the trained adapter from it
    fresh = SFTModule(PolicyConfig(model=str(text_policy)), lora=LORA, prompt=PROMPT)
    assert fresh.strict_loading is False
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert not unexpected and all("lora_" not in k for k in missing)
    tok = module.tokenizer
    assert torch.allclose(lm_logits(fresh.model, tok), lm_logits(module.model, tok), atol=1e-6)


def test_lora_export_loads_back_as_the_trained_policy(sft_text_run: dict[str, Any], tmp_path: Path) -> None:
    module = sft_text_run["module"]
    out = module.export(tmp_path / "sft")
    assert json_kind(out) == "adapter" and (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    loaded, tokenizer = load_policy(PolicyConfig(model=str(out)))
    assert not is_peft(loaded)  # the adapter is merged on load
    trained = lm_logits(module.model, tokenizer)  # [1, L, V], entries up to ~10 (init std 0.3)
    # merging W + s*BA rounds differently from W x + s*B(A x) in float32: a few 1e-6 relative
    assert torch.allclose(lm_logits(loaded, tokenizer), trained, rtol=1e-5, atol=5e-5)
    with module.model.disable_adapter():  # not vacuous: the adapter moves the output far more than that
        assert (lm_logits(module.model, tokenizer) - trained).abs().max() > 1e-2


def test_scratch_model_full_fine_tuning_exports_a_full_model(corpus: dict[str, Path], tmp_path: Path) -> None:
    texts = ["a building near a shop with a sign", "<think>The candidates differ.</think><question>What colour is the facade?</question>",
             "Description: Candidate reasoning question facade colour"]
    tokenizer_dir = tmp_path / "tokenizer"
    train_corpus_tokenizer(texts, vocab_size=300).save_pretrained(tokenizer_dir)
    scratch = ScratchLMConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    policy = PolicyConfig(model=str(tokenizer_dir), scratch=scratch)
    with pytest.raises(ValueError, match="scratch"):
        SFTModule(policy, lora=LORA).export(tmp_path / "no")  # random base weights cannot be an adapter's base

    seed_everything(0)
    module = SFTModule(policy, lora=None, lr=1e-2, optim=NO_WARMUP, prompt=PROMPT, export_dir=str(tmp_path / "auto"))
    initial = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    fit(module, datamodule(corpus, "sft"), steps=2)
    assert all(p.requires_grad for p in module.model.parameters())
    assert any(not torch.equal(p.detach(), initial[n]) for n, p in module.model.named_parameters())

    out = module.export(tmp_path / "full")
    assert json_kind(out) == "full" and (out / "model.safetensors").is_file()
    loaded, tokenizer = load_policy(PolicyConfig(model=str(out)))
    assert torch.allclose(lm_logits(loaded, tokenizer), lm_logits(module.model, module.tokenizer), atol=1e-5)


# ---- GRPO ---------------------------------------------------------------------------------------


def test_grpo_with_lora_trains_the_adapter_and_logs(corpus: dict[str, Path], text_policy: Path, tmp_path: Path) -> None:
    module = grpo_module(text_policy, tmp_path)
    before = snapshot(module.model)
    trainer = fit(module, datamodule(corpus, "grpo", val=True), steps=2)
    assert trainer.global_step == 2 and module.aborted_steps == 0
    assert_adapter_trained_base_frozen(module.model, before)
    m = trainer.callback_metrics
    for key in ("train/reward_mean", "train/zero_spread_groups", "train/reward_group_std", "train/kl", "train/clip_fraction", "train/completion_length", "time/generation_s",
                "train/reward/length", "train/reward/format", "val/reward"):
        assert key in m and math.isfinite(float(m[key])), key
    assert 1 <= float(m["train/completion_length"]) <= 8  # max_new_tokens
    assert float(m["train/kl"]) >= 0 and 0 <= float(m["train/clip_fraction"]) <= 1
    assert 0 <= float(m["train/zero_spread_groups"]) <= 1
    assert float(m["train/aborted_steps"]) == 0


def test_grpo_logp_is_the_sampling_policy(corpus: dict[str, Path], text_policy: Path, tmp_path: Path) -> None:
    """``completion_logp`` of a rollout equals the log-softmax of the logits ``generate`` sampled from
    (left-padded prompts of different lengths), and with LoRA the reference is the base model."""
    module = grpo_module(text_policy, tmp_path, group_size=2, temperature=0.7)
    examples = prompts(module, corpus)[:3]
    torch.manual_seed(0)
    roll = module.rollout(examples)
    assert roll.prompt_ids.shape[0] == 6 and (roll.prompt_mask == 0).any()  # padding exercised
    assert_matches_generation(module, examples, roll, temperature=0.7)
    assert roll.ref_logp is not None and torch.allclose(roll.ref_logp, module.completion_logp(module.model, roll), atol=1e-5)


def assert_matches_generation(module: GRPOModule, examples: list[TurnExample], roll: Rollout, temperature: float) -> None:
    """Replay the rollout's tokens through ``generate`` (forced, one step at a time with the KV cache)."""
    g = roll.prompt_ids.shape[0] // len(examples)
    enc = module.encoder(module.messages(examples))
    enc = {k: v.repeat_interleave(g, dim=0) if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v for k, v in enc.items()}
    if "pixel_values" in enc:
        enc.update({k: v for k, v in roll.vision.items() if k in ("pixel_values", "image_grid_thw")})
    t = roll.completion_ids.shape[1]

    class Force:  # logits processor: record the raw logits, then force the rollout's token
        def __init__(self) -> None:
            self.logits: list[torch.Tensor] = []

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            step = len(self.logits)
            self.logits.append(scores.clone())
            forced = torch.full_like(scores, -math.inf)
            forced.scatter_(1, roll.completion_ids[:, step : step + 1], 0.0)
            return forced

    from transformers import LogitsProcessorList

    force = Force()
    module.model.eval()
    with torch.no_grad():
        # a VLM samples with its image/video placeholders suppressed: the replay records the same distribution
        module.model.generate(**enc, max_new_tokens=t, do_sample=False, logits_processor=LogitsProcessorList([force]),
                              pad_token_id=module.tokenizer.pad_token_id, eos_token_id=module.tokenizer.eos_token_id, use_cache=True,
                              suppress_tokens=placeholder_token_ids(module.model) or None)
        logp = module.completion_logp(module.model, roll)
    n = len(force.logits)  # generate stops once every row has its end-of-turn token
    assert not roll.completion_mask[:, n:].any()
    ids = roll.completion_ids[:, :n]
    ref = torch.stack(force.logits, dim=1).float().div(temperature).log_softmax(-1).gather(2, ids[:, :, None]).squeeze(2)
    logp = logp[:, :n]
    keep = roll.completion_mask[:, :n].bool()
    assert torch.allclose(logp[keep], ref[keep], atol=1e-4), (logp - ref)[keep].abs().max()


def test_vlm_rollout_never_writes_image_placeholders(corpus: dict[str, Path], vlm_policy: Path, tmp_path: Path) -> None:
    """A policy whose head prefers ``<|image_pad|>`` (a random 7B's sampler meets such tokens): the
    rollout suppresses the placeholders, so the log-prob passes run (fed back, each one asked for
    vision features that do not exist and the forward failed), are finite, and give the placeholders
    no probability."""
    grpo = GRPOModule(PolicyConfig(model=str(vlm_policy)), rewards=length_and_format(), grpo=GRPOConfig(group_size=2, max_new_tokens=6),
                      lora=LORA, lr=1e-3, optim=NO_WARMUP, prompt=PROMPT, export_dir=str(tmp_path / "grpo"))
    placeholders = placeholder_token_ids(grpo.model)
    image, video = grpo.processor.image_token_id, grpo.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert {image, video} <= set(placeholders)
    old_head = grpo.model.get_output_embeddings()
    head = torch.nn.Linear(old_head.in_features, old_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[[image, video]] = 30.0  # unsuppressed, every sampled token is a placeholder
    grpo.model.set_output_embeddings(head)
    examples = prompts(grpo, corpus)[:2]
    torch.manual_seed(0)
    roll = grpo.rollout(examples)
    assert roll.ref_logp is not None
    written = roll.completion_ids[roll.completion_mask.bool()]
    assert written.numel() > 0 and not torch.isin(written, torch.tensor(placeholders)).any()
    logp = grpo.completion_logp(grpo.model, roll)
    keep = roll.completion_mask.bool()
    assert torch.isfinite(logp[keep]).all() and torch.isfinite(roll.ref_logp[keep]).all()
    # the other tokens share the probability uniformly (zero weights): log(1 / (V - placeholders))
    expected = -math.log(old_head.out_features - len(placeholders))
    assert torch.allclose(logp[keep], torch.full_like(logp[keep], expected), atol=1e-5)


def test_grpo_without_lora_keeps_a_frozen_reference(corpus: dict[str, Path], text_policy: Path, tmp_path: Path) -> None:
    module = grpo_module(text_policy, tmp_path, lora=None, beta=0.1)
    initial = copy.deepcopy(module.model)
    ref = module._reference[0]
    assert not any(p.requires_grad for p in ref.parameters())
    assert not any(k.startswith("_reference") for k in module.state_dict())
    examples = prompts(module, corpus)[:2]
    torch.manual_seed(1)
    roll = module.rollout(examples)
    fit(module, datamodule(corpus, "grpo"), steps=1)
    changed = [n for n, p in module.model.named_parameters() if not torch.equal(p.detach(), initial.get_parameter(n))]
    assert changed, "full fine-tuning did not move the policy"
    assert torch.equal(module.reference_logp(roll), module.completion_logp(initial, roll).detach())
    assert not torch.allclose(module.completion_logp(module.model, roll), roll.ref_logp, atol=1e-6)


class NaNAt:
    def __init__(self, index: int, value: float = math.nan) -> None:
        self.index, self.value = index, value

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]:
        return [self.value if i == self.index else 0.5 for i in range(len(completions))]


class WrongLength:
    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]:
        return [1.0] * (len(completions) - 1)


@pytest.mark.parametrize("bad", [NaNAt(3), NaNAt(0, math.inf), WrongLength()], ids=["nan", "inf", "wrong_length"])
def test_grpo_aborts_a_step_on_a_bad_reward(bad: Any, corpus: dict[str, Path], text_policy: Path, tmp_path: Path) -> None:
    module = grpo_module(text_policy, tmp_path, rewards=[WeightedReward("ok", LengthReward()), WeightedReward("bad", bad)])
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer = fit(module, datamodule(corpus, "grpo"), max_epochs=1, limit_train_batches=1)  # no exception escapes
    assert module.aborted_steps == 1 and trainer.global_step == 0
    assert float(trainer.callback_metrics["train/aborted_steps"]) == 1
    assert all(torch.equal(p.detach(), before[n]) for n, p in module.model.named_parameters())


class DeadUser:
    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]:
        raise AnswererFailing("the simulated user failed 20 answers in a row (api_error:NotFoundError x20)")


def test_grpo_stops_when_the_simulated_user_keeps_failing(corpus: dict[str, Path], text_policy: Path, tmp_path: Path) -> None:
    # unlike a bad reward value (one batch skipped), a dead endpoint would fail every batch: the run stops
    module = grpo_module(text_policy, tmp_path, rewards=[WeightedReward("ok", LengthReward()), WeightedReward("user", DeadUser())])
    with pytest.raises(AnswererFailing, match="NotFoundError x20"):
        fit(module, datamodule(corpus, "grpo"), max_epochs=1, limit_train_batches=1)
    assert module.aborted_steps == 0


class ScriptedReward:
    """Returns fixed values; keeps the keyword batch it was called with."""

    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.batch: dict[str, Any] = {}

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]:
        self.batch = batch
        return list(self.values)


def test_grpo_score_weights_rewards_and_standardises_per_group(corpus: dict[str, Path], text_policy: Path, tmp_path: Path) -> None:
    scripted = ScriptedReward([1, 0, 0, 1, 3, 3, 3, 3])
    module = grpo_module(text_policy, tmp_path, rewards=[WeightedReward("scripted", scripted), WeightedReward("format", FormatReward(), 0.5)])
    examples = prompts(module, corpus)[:2]
    ok = "<think>x</think><question>What colour is the door?</question>"
    completions = ["no format", "no format", "no format", "no format", ok, ok, ok, ok]
    empty = torch.zeros(8, 1, dtype=torch.long)
    scored = module.score(examples, Rollout(empty, empty, empty, empty, completions, {}, None, None))

    assert torch.equal(scored.parts["scripted"], torch.tensor([1.0, 0, 0, 1, 3, 3, 3, 3], dtype=scored.parts["scripted"].dtype))
    assert scored.parts["format"].tolist() == [0.0] * 4 + [1.0] * 4
    assert torch.allclose(scored.rewards, torch.tensor([1.0, 0, 0, 1, 3.5, 3.5, 3.5, 3.5]))
    r = torch.tensor([1.0, 0, 0, 1])
    std = math.sqrt(((r - 0.5) ** 2).sum().item() / 3)  # unbiased
    expected = torch.cat([(r - 0.5) / (std + 1e-4), torch.zeros(4)])
    assert torch.allclose(scored.advantages, expected, atol=1e-6)
    # each completion's batch entry is its own prompt's turn (rows p * G + g)
    assert [ex.turn.key for ex in scripted.batch["example"]] == [examples[0].turn.key] * 4 + [examples[1].turn.key] * 4
    assert scripted.batch["target"][5] == examples[1].target and scripted.batch["history"][0] == examples[0].request.history
    assert scripted.batch["initial_description"][4] == examples[1].request.initial_description


# ---- vision-language policy ---------------------------------------------------------------------


def test_vlm_sft_and_grpo_with_candidate_images(corpus: dict[str, Path], vlm_policy: Path, tmp_path: Path) -> None:
    seed_everything(0)
    sft = SFTModule(PolicyConfig(model=str(vlm_policy)), lora=LORA, lr=1e-2, optim=NO_WARMUP, prompt=PROMPT,
                    export_dir=str(tmp_path / "sft"))
    assert sft.is_vlm and sft.with_images
    dm = datamodule(corpus, "sft")
    dm.set_processor(sft.processor, True, "sft")
    batch = next(iter(dm.train_dataloader()))
    image_token = sft.processor.image_token_id
    assert int(batch["image_grid_thw"].shape[0]) == 4 and (batch["input_ids"] == image_token).any()
    if "mm_token_type_ids" in batch:  # token-aligned: padded with the batch, 1 exactly on the image placeholders
        assert batch["mm_token_type_ids"].shape == batch["input_ids"].shape
        assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == image_token)
    before = snapshot(sft.model)
    trainer = fit(sft, datamodule(corpus, "sft"), steps=2)
    assert trainer.global_step == 2 and math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert_adapter_trained_base_frozen(sft.model, before)

    seed_everything(0)
    grpo = GRPOModule(PolicyConfig(model=str(vlm_policy)), rewards=length_and_format(), grpo=GRPOConfig(group_size=2, max_new_tokens=6),
                      lora=LORA, lr=1e-3, optim=NO_WARMUP, prompt=PROMPT, export_dir=str(tmp_path / "grpo"))
    examples = prompts(grpo, corpus)[:2]
    torch.manual_seed(0)
    roll = grpo.rollout(examples)
    # each completion row carries its own prompt's 2 candidate images (rows p * G + g)
    assert roll.vision["image_grid_thw"].shape[0] == 2 * 2 * 2
    assert_matches_generation(grpo, examples, roll, temperature=1.0)
    before = snapshot(grpo.model)
    trainer = fit(grpo, datamodule(corpus, "grpo"), steps=2)
    assert trainer.global_step == 2 and grpo.aborted_steps == 0
    assert math.isfinite(float(trainer.callback_metrics["train/kl"]))
    assert_adapter_trained_base_frozen(grpo.model, before)

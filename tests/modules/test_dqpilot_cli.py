"""DQ-Pilot through ``python -m dlgpr`` (LightningCLI): configs/dqpilot_sft.yaml, then configs/dqpilot_grpo.yaml.

Both stage configs run as written apart from the paths and sizes given on the command line: a
tiny place dataset (tests/helpers/shards.py), a tiny dialogue corpus over it written with the corpus
writers, its own byte-level tokenizer, a scratch Qwen2 of 32 hidden units, a few steps on CPU.
GRPO starts from the SFT export and swaps the retrieval-gain reward (it needs a trained
retriever) for cheap ones through an override YAML, as a user would.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch

from datamodules.dialogue import CurriculumConfig
from dlgpr.cli import main
from dlgpr.data.schema import make_key
from dlgpr.data.turns import DialogueTurnRecord, write_dialogue_manifest, write_turn_shards
from dlgpr.models.prompting import PromptConfig
from dlgpr.models.questioner import POLICY_FILE, PolicyConfig, is_peft, load_policy, train_corpus_tokenizer
from tests.helpers.cli_args import sft_args
from tests.helpers.shards import make_tiny_dataset

ROOT = Path(__file__).resolve().parents[2]
GRPO_CONFIG = ROOT / "configs" / "dqpilot_grpo.yaml"


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dlgpr"])  # LightningCLI(args=...) must not also see pytest's argv


class LengthReward:
    """Cheap, deterministic and different across a group of samples (``class_path: tests.modules.test_dqpilot_cli.LengthReward``)."""

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]:
        return [len(c) / 100 for c in completions]


# ---- world: places, corpus, tokenizer -------------------------------------------------------------


def _turn(place: int, round_: int, candidates: list[str], stage: str, ddi: float) -> DialogueTurnRecord:
    history = [{"question": "What colour is the facade?", "answer": "The facade is red."}] * (round_ - 1)
    return DialogueTurnRecord(
        key=f"d{place:09d}_r{round_}", place_id=place, round=round_, initial_description="a building near a shop" + " with a sign" * place,
        history=history, candidates=candidates, think="The candidates differ in facade colour.",
        question="What colour is the facade of the building?", answer="The facade is red.", prg=0.5, sa=0.2, ddi=ddi, stage=stage,
    )


def write_world(root: Path) -> dict[str, Path]:
    """4 train places (ids 0-3) and 2 val places (4-5) of one city, 2 views each; 4 sft, 4 grpo and
    2 val turns over them (2 candidates each: the target's view 0, another place's view 1); the
    corpus tokenizer in ``<corpus>/tokenizer``, as scripts/build_dialogues.py lays it out."""
    places, corpus = root / "places", root / "dialogues"
    make_tiny_dataset(places, places={"train": 4, "val": 2}, cities=("Alpha",))

    def cands(p: int, other: int) -> list[str]:
        return [make_key("Alpha", p, 0), make_key("Alpha", other, 1)]

    turns = {
        "sft": [_turn(p, 1 + p % 2, cands(p, (p + 1) % 4), "sft", 0.1 * p) for p in range(4)],
        "grpo": [_turn(p, 2 - p % 2, cands(p, (p + 2) % 4), "grpo", 0.1 * p) for p in range(4)],
        "val": [_turn(p, 1, cands(p, 9 - p), "val", 0.5) for p in (4, 5)],
    }
    shards = [s for stage, ts in turns.items() for s in write_turn_shards(corpus, stage, ts, 8)]
    write_dialogue_manifest(corpus, shards, {"generator": "tests"})
    texts = [x for ts in turns.values() for t in ts for x in (t.initial_description, t.think, t.question, t.answer)]
    train_corpus_tokenizer(texts + ["a red building number 3 in Alpha, view 0"], vocab_size=300).save_pretrained(str(corpus / "tokenizer"))
    return {"places": places, "corpus": corpus, "tokenizer": corpus / "tokenizer"}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """configs/dqpilot_sft.yaml for 2 steps (one epoch of 2 batches, validation half way)."""
    tmp = tmp_path_factory.mktemp("dqpilot_cli")
    world = write_world(tmp)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["dlgpr"])
        mp.chdir(tmp)
        cli = main(sft_args(world, tmp, "--trainer.max_steps", "2"), run=False)
        before = {k: v.detach().clone() for k, v in cli.model.state_dict().items()}
        cli.trainer.fit(cli.model, cli.datamodule)
    return {"world": world, "tmp": tmp, "cli": cli, "before": before, "export": tmp / "sft_policy"}


# ---- SFT ------------------------------------------------------------------------------------------


def test_sft_config_fits_exports_and_resumes(sft_run, monkeypatch):
    tmp, cli = sft_run["tmp"], sft_run["cli"]
    monkeypatch.chdir(tmp)
    assert type(cli.model).__name__ == "SFTModule" and type(cli.datamodule).__name__ == "DialogueDataModule"
    assert cli.model.lora is None and cli.model.model.config.hidden_size == 32 and cli.model.model.config.num_hidden_layers == 1
    # one prompt config: the datamodule gets the module's, with the command line's override
    assert cli.datamodule.prompt == cli.model.prompt == PromptConfig(max_description_words=40, max_prompt_tokens=512)
    assert cli.trainer.global_step == 2
    before, after = sft_run["before"], cli.model.state_dict()
    assert set(before) == set(after)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before), sorted(set(before) - set(changed))  # every weight trains (no LoRA)
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"]) and "val/loss" in cli.trainer.callback_metrics

    ckpt = Path(cli.trainer.checkpoint_callback.last_model_path)
    assert ckpt.name == "last.ckpt" and ckpt.is_file() and ckpt.is_relative_to(tmp / "logs" / "dqpilot" / "sft")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2 and set(saved["state_dict"]) == set(after)  # full weights without LoRA

    export = sft_run["export"]
    assert json.loads((export / POLICY_FILE).read_text())["kind"] == "full"
    model, tokenizer = load_policy(PolicyConfig(model=str(export)))
    assert not is_peft(model) and len(tokenizer) == len(cli.model.tokenizer)
    for k, v in model.state_dict().items():
        assert torch.equal(v, after[f"model.{k}"]), k

    # resume: same config, the step counter and the weights continue from last.ckpt (the checkpoint's
    # hyperparameters win over the command line under --ckpt_path: the export goes to the same place)
    after = {k: v.clone() for k, v in after.items()}
    resumed = main(["fit", *sft_args(sft_run["world"], tmp, "--trainer.max_steps", "4", "--trainer.logger.init_args.version", "sft_resumed"),
                    "--ckpt_path", str(ckpt)])
    assert resumed.trainer.global_step == 4 and resumed.trainer.current_epoch == 2
    now = resumed.model.state_dict()
    key = "model.model.embed_tokens.weight"
    assert not torch.equal(now[key], after[key])  # trained on
    assert (now[key] - after[key]).abs().max() < (now[key] - before[key]).abs().max()  # from the checkpoint, not from scratch
    assert Path(resumed.trainer.checkpoint_callback.last_model_path).is_relative_to(tmp / "logs" / "dqpilot" / "sft_resumed")
    model, _ = load_policy(PolicyConfig(model=str(export)))  # re-exported at the end of the resumed run
    assert torch.equal(model.state_dict()["model.embed_tokens.weight"], now[key])


# ---- GRPO -----------------------------------------------------------------------------------------


def test_grpo_config_from_the_sft_export_trains_the_adapter_and_exports_it(sft_run, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    world = sft_run["world"]
    rewards = tmp_path / "rewards.yaml"  # the retrieval-gain reward needs a trained retriever: cheap rewards instead
    rewards.write_text(
        "model:\n"
        "  init_args:\n"
        "    rewards:\n"
        "      - name: length\n"
        "        weight: 1.0\n"
        "        fn:\n"
        "          class_path: tests.modules.test_dqpilot_cli.LengthReward\n"
        "      - name: format\n"
        "        weight: 1.0\n"
        "        fn:\n"
        "          class_path: dlgpr.rewards.FormatReward\n"
    )
    export = tmp_path / "grpo_policy"
    cli = main([
        "--config", str(GRPO_CONFIG), "--config", str(rewards),
        "--data.init_args.data_dir", str(world["corpus"]),
        "--data.init_args.place_data_dir", str(world["places"]),
        "--data.init_args.batch_size", "2",
        "--data.init_args.val_batch_size", "2",
        "--model.init_args.policy.model", str(sft_run["export"]),
        "--model.init_args.grpo.group_size", "2",
        "--model.init_args.grpo.max_new_tokens", "8",
        "--model.init_args.prompt.max_prompt_tokens", "512",
        "--model.init_args.export_dir", str(export),
        "--trainer.max_steps", "2",
        "--trainer.val_check_interval", "1.0",
        "--trainer.limit_val_batches", "1",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ], run=False)
    module = cli.model
    assert type(module).__name__ == "GRPOModule" and [r.name for r in module.rewards] == ["length", "format"]
    assert type(module.rewards[0].fn) is LengthReward  # the class of this test module, imported by jsonargparse
    assert module.grpo.group_size == 2 and module.lora.r == 16 and is_peft(module.model)
    assert cli.datamodule.prompt == module.prompt == PromptConfig(max_description_words=40, max_prompt_tokens=512)
    assert cli.datamodule.curriculum == CurriculumConfig(mode="stratified", num_buckets=10)
    lora_before = {n: p.detach().clone() for n, p in module.model.named_parameters() if "lora_" in n}
    base_before = {n: p.detach().clone() for n, p in module.model.named_parameters() if "lora_" not in n}
    assert lora_before and all(not p.requires_grad for n, p in module.model.named_parameters() if "lora_" not in n)

    cli.trainer.fit(module, cli.datamodule)
    assert module.aborted_steps == 0 and cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    assert {"train/reward", "train/reward/length", "train/reward/format", "val/reward"} <= set(metrics)
    params = dict(module.model.named_parameters())
    assert all(torch.equal(params[n].detach(), p) for n, p in base_before.items())  # the SFT weights stay frozen
    assert any(not torch.equal(params[n].detach(), p) for n, p in lora_before.items() if "lora_B" in n)  # the adapter moved

    ckpt = Path(cli.trainer.checkpoint_callback.last_model_path)
    assert ckpt.name == "last.ckpt" and ckpt.is_file()
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2
    assert saved["state_dict"] and all("lora_" in k for k in saved["state_dict"])  # the adapter only
    assert set(saved["state_dict"]) == {f"model.{n}" for n in lora_before}

    meta = json.loads((export / POLICY_FILE).read_text())
    assert meta["kind"] == "adapter" and meta["base"]["model"] == str(sft_run["export"])
    assert (export / "adapter_config.json").is_file()
    merged, _ = load_policy(PolicyConfig(model=str(export)))
    assert not is_peft(merged)
    module.model.eval()
    ids = module.tokenizer("<think>red</think><question>What colour?</question>", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, module.model(input_ids=ids).logits, atol=1e-5, rtol=1e-4)

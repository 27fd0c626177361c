"""Policy exports: a GRPO adapter on an SFT adapter loads with plain peft; exports record their prompt limits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from dlgpr.dialogue.hf import DQPilotQuestioner
from dlgpr.models.prompting import PromptConfig
from dlgpr.models.questioner import LoRAConfig, PolicyConfig, apply_lora, export_policy, exported_prompt, load_policy, stack_lora_adapters
from dlgpr.testing.tiny_models import save_tiny_policy


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_policy(tmp_path_factory.mktemp("base"))


def _trained_adapter(model: torch.nn.Module, lora: LoRAConfig, seed: int) -> torch.nn.Module:
    """``model`` with a LoRA adapter whose B is non-zero, as after training (a fresh B is zero)."""
    peft = apply_lora(model, lora)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return peft.eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(3, 19).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_grpo_adapter_on_an_sft_adapter_loads_with_plain_peft(base_dir: Path, tmp_path: Path) -> None:
    base = PolicyConfig(model=str(base_dir))
    # stage 1: an SFT adapter on q/v
    model, tok = load_policy(base)
    sft = _trained_adapter(model, LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]), seed=1)
    sft_dir = export_policy(sft, tok, tmp_path / "sft", base)
    # stage 2: GRPO starts from the merged SFT weights with its own adapter, on other modules too
    merged, tok = load_policy(PolicyConfig(model=str(sft_dir)))
    grpo = _trained_adapter(merged, LoRAConfig(r=2, alpha=6, target_modules=["q_proj", "o_proj"]), seed=2)
    policy = _logits(grpo)
    grpo.save_pretrained(str(tmp_path / "grpo_alone"))  # the adapter as peft saves it: it names the raw base
    out = export_policy(grpo, tok, tmp_path / "grpo", PolicyConfig(model=str(sft_dir)))

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir) and config["r"] == 6 and config["lora_alpha"] == 6
    assert sorted(config["target_modules"]) == ["o_proj", "q_proj", "v_proj"]
    # what vLLM or a user does: the raw base + the adapter, no dlgpr
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir)), str(out)).eval()
    assert torch.allclose(_logits(plain), policy, rtol=1e-5, atol=5e-5)
    reloaded, _ = load_policy(PolicyConfig(model=str(out)))
    assert torch.allclose(_logits(reloaded), policy, rtol=1e-5, atol=5e-5)
    # not vacuous: the raw base with the GRPO adapter alone (what an unstacked export gives) is another model
    alone = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir)), str(tmp_path / "grpo_alone")).eval()
    assert (_logits(alone) - policy).abs().max() > 1e-2
    assert json.loads((out / "dlgpr_policy.json").read_text())["base"]["model"] == str(base_dir)


def test_stacking_refuses_what_is_not_plain_lora(tmp_path: Path) -> None:
    for name, extra in (("a", {}), ("b", {"use_dora": True})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2, "peft_type": "LORA", **extra}))
        save_file({"m.lora_A.weight": torch.zeros(2, 4), "m.lora_B.weight": torch.zeros(4, 2)}, str(tmp_path / name / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="only plain LoRA"):
        stack_lora_adapters(tmp_path / "a", tmp_path / "b", tmp_path / "c")
    with pytest.raises(ValueError, match="not a LoRA adapter export"):
        stack_lora_adapters(tmp_path / "a", tmp_path / "missing", tmp_path / "c")


def test_exports_record_their_prompt_limits_and_the_questioner_uses_them(base_dir: Path, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    model, tok = load_policy(PolicyConfig(model=str(base_dir)))
    trained = PromptConfig(max_description_words=60, max_prompt_tokens=4096, show_images="never")
    out = export_policy(model, tok, tmp_path / "full", PolicyConfig(model=str(base_dir)), trained)
    assert exported_prompt(out) == {"show_images": "never", "max_description_words": 60, "max_prompt_tokens": 4096}
    questioner = DQPilotQuestioner(str(out), device="cpu")
    assert (questioner.config.max_prompt_tokens, questioner.config.max_description_words, questioner.config.show_images) == (4096, 60, "never")
    with caplog.at_level(logging.WARNING):
        override = DQPilotQuestioner(str(out), device="cpu", max_prompt_tokens=1024)
    assert override.config.max_prompt_tokens == 1024 and "differs from the 4096 the policy was trained with" in caplog.text
    # an export that records nothing keeps the former defaults
    bare = export_policy(model, tok, tmp_path / "bare", PolicyConfig(model=str(base_dir)))
    assert exported_prompt(bare) == {}
    assert DQPilotQuestioner(str(bare), device="cpu").config.max_prompt_tokens == 1024


def test_exclude_modules_keeps_the_vision_tower_frozen() -> None:
    from dlgpr.testing.tiny_models import tiny_qwen25vl

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    adapted = [n for n, p in apply_lora(tiny_qwen25vl()[0], LoRAConfig(target_modules=targets)).named_parameters() if "lora_" in n]
    assert any(".visual." in n for n in adapted)  # the vision blocks' MLPs share the names
    model = apply_lora(tiny_qwen25vl()[0], LoRAConfig(target_modules=targets, exclude_modules=".*visual.*"))
    adapted = [n for n, p in model.named_parameters() if "lora_" in n]
    assert adapted and not any(".visual." in n for n in adapted)
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".visual." in n)

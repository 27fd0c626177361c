"""The embedded GLOBE policy (ImagePolicy) inside GRPOModule / SFTModule, on a tiny random policy.

Checked: the GRPO log-probs equal a naive per-token computation on unpadded prefixes, GRPOModule
hands the geo rewards the GeoSample as ``sample``, one GRPO step moves the policy towards the
higher-reward completion, the frozen image tower stays frozen, and the export loads back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pytest
import torch

from dlgpr.data.geo import GeoSample
from dlgpr.models.prompting import PromptConfig
from dlgpr.models.questioner import GEO_FORMAT_TAGS, ImagePolicyConfig, PolicyConfig, ScratchLMConfig, load_policy, train_corpus_tokenizer
from dlgpr.modules.dqpilot import GRPOConfig, GRPOModule, Rollout
from dlgpr.modules.optim import OptimConfig
from dlgpr.rewards import GeoFormatReward, WeightedReward
from tests.helpers.geo import colour_sample

TEXTS = ["<think>I see a red door and a green awning.</think><answer>Borgo, Valdoria</answer>",
         "You locate street-view photos. Where was this photo taken? Describe this street view."] * 10
IMAGE = ImagePolicyConfig(tower_model="dlgpr-tiny", tower_pretrained=None, image_tokens=2,
                          decoder=ScratchLMConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64,
                                                  max_position_embeddings=512))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_corpus_tokenizer(TEXTS, vocab_size=400, tags=GEO_FORMAT_TAGS).save_pretrained(str(out))
    return out


class Recorder:
    """A reward that remembers its batch and scores by reply length (a well-formed reply gets more)."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]:
        self.batches.append({"prompts": list(prompts), **batch})
        return [0.0] * len(completions)


def module(tokenizer_dir: Path, rewards: list[WeightedReward] | None = None, **grpo: Any) -> GRPOModule:
    rewards = rewards or [WeightedReward("format", GeoFormatReward(), 1.0)]
    return GRPOModule(PolicyConfig(model=str(tokenizer_dir), image=IMAGE), rewards,
                      GRPOConfig(**{"group_size": 3, "max_new_tokens": 8, "beta": 0.0, **grpo}), lr=1e-2,
                      optim=OptimConfig(weight_decay=0.0, warmup_steps=0), prompt=PromptConfig(max_prompt_tokens=128))


def samples() -> list[GeoSample]:
    return [colour_sample("a", 10.0, 5.0, (255, 0, 0), place_id=1, city="Borgo", country="Valdoria", size=64),
            colour_sample("b", 11.0, 6.0, (0, 0, 255), place_id=2, city="Aurelia", country="Valdoria", size=64)]


def test_image_policy_keeps_its_tower_frozen(tokenizer_dir: Path) -> None:
    m = module(tokenizer_dir)
    tower = [p.requires_grad for p in m.model.tower.parameters()]
    assert tower and not any(tower)
    assert all(p.requires_grad for p in m.model.projector.parameters()) and all(p.requires_grad for p in m.model.lm.parameters())
    m.model.train()
    assert not m.model.tower.training


def test_completion_logp_matches_a_naive_per_token_computation(tokenizer_dir: Path) -> None:
    torch.manual_seed(0)
    m = module(tokenizer_dir, temperature=0.7)
    # prompts of different lengths, so the batch is left-padded
    s = samples()
    s[1] = GeoSample(**{**{f: getattr(s[1], f) for f in ("key", "lat", "lon", "city", "country", "place_id")}, "image_bytes": s[1].image_bytes})
    roll = m.rollout(s)
    logp = m.completion_logp(m.model, roll)  # [N, T]
    assert logp.shape == roll.completion_ids.shape
    m.model.eval()
    with torch.no_grad():
        for n in range(roll.completion_ids.shape[0]):
            prompt = roll.prompt_ids[n][roll.prompt_mask[n].bool()]  # unpadded
            pixels = roll.vision["pixel_values"][n : n + 1]
            for t in range(int(roll.completion_mask[n].sum())):
                ids = torch.cat([prompt, roll.completion_ids[n, :t]])[None]
                logits = m.model(input_ids=ids, pixel_values=pixels).logits[0, -1] / 0.7
                naive = torch.log_softmax(logits, -1)[roll.completion_ids[n, t]]
                torch.testing.assert_close(logp[n, t], naive, atol=1e-4, rtol=1e-4)


def test_rewards_get_the_geo_sample(tokenizer_dir: Path) -> None:
    rec = Recorder()
    m = module(tokenizer_dir, rewards=[WeightedReward("format", GeoFormatReward(), 1.0), WeightedReward("rec", rec, 0.0)])
    s = samples()
    total, parts = m.rewards_of(s, ["<think>x</think><answer>Borgo, Valdoria</answer>", "bad"] * 3)
    [batch] = rec.batches
    assert batch["sample"] == [s[0], s[0], s[0], s[1], s[1], s[1]]
    assert batch["prompts"] == batch["sample"]
    assert parts["format"] == [1.0, 0.0] * 3


def test_one_grpo_step_moves_towards_the_higher_reward_completion(tokenizer_dir: Path) -> None:
    torch.manual_seed(0)
    m = module(tokenizer_dir, group_size=2)
    tok = m.tokenizer
    good = tok("<think>red</think><answer>Borgo, Valdoria</answer>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    bad = tok("green awning door", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    length = max(len(good), len(bad))
    comp = torch.full((2, length), tok.pad_token_id)
    mask = torch.zeros(2, length, dtype=torch.long)
    for i, seq in enumerate((good, bad)):
        comp[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    s = samples()[:1]
    enc = m.encoder.encode(m.messages(s), m.model)
    roll = Rollout(enc["input_ids"].repeat(2, 1), enc["attention_mask"].repeat(2, 1), comp, mask, ["good", "bad"],
                   {"pixel_values": enc["pixel_values"].repeat(2, 1, 1, 1)}, None, None)
    opt = torch.optim.SGD([p for _, p in m.trainable_parameters()], lr=0.05)
    m.optimizers = lambda: opt  # type: ignore[method-assign]
    m.lr_schedulers = lambda: None  # type: ignore[method-assign]
    m.manual_backward = lambda loss: loss.backward()  # type: ignore[method-assign]
    m.model.eval()  # no dropout: the comparison is of the weights alone

    def seq_logp() -> torch.Tensor:
        with torch.no_grad():
            return (m.completion_logp(m.model, roll) * mask).sum(1)  # [2]

    before = seq_logp()
    tower = {k: v.clone() for k, v in m.model.tower.state_dict().items()}
    m.grpo_step(roll, torch.tensor([1.0, -1.0]))
    after = seq_logp()
    assert after[0] > before[0] and after[1] < before[1]
    assert all(torch.equal(v, m.model.tower.state_dict()[k]) for k, v in tower.items())


def test_export_loads_back_as_the_same_policy(tokenizer_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = module(tokenizer_dir)
    with torch.no_grad():
        m.model.projector[1].weight.normal_()
    m.export(tmp_path / "policy")
    loaded, _ = load_policy(PolicyConfig(model=str(tmp_path / "policy")))
    enc = m.encoder.encode(m.messages(samples()), m.model)
    m.model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc).logits, m.model(**enc).logits)

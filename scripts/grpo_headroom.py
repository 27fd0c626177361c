"""Why GRPO does (not) move DQ-Pilot: diversity of the sampled questions and the reward's headroom.

    python scripts/grpo_headroom.py --policy lightning_logs/dqpilot/sft/policy --prompts 48

On GRPO-stage prompts: samples G completions per prompt from the policy (as a rollout does) and
reports how many distinct questions a group holds and how often all G rewards are equal (a zero
advantage: no gradient); then scores every canonical slot question with the same retrieval-gain
reward to show how much PRG the best question would earn against the policy's greedy choice and
the teacher's. A failed reply scores the reward's failure_value, as in training.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from datamodules.dialogue import DialogueDataModule
from dlgpr.data.synth.dialogue import SLOT_QUESTIONS
from dlgpr.dialogue.hf import DQPilotQuestioner
from dlgpr.models.reply_format import format_question, parse_question
from dlgpr.models.prompting import PromptConfig, questioner_messages
from dlgpr.rewards import RetrievalGainReward


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default="lightning_logs/dqpilot/sft/policy")
    p.add_argument("--retriever", default="lightning_logs/dqpilot/retriever/checkpoints/last.ckpt")
    p.add_argument("--corpus", default="data/dialogues/synthcities")
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--group-size", type=int, default=6)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    dm = DialogueDataModule(data_dir=args.corpus, train_stages=["grpo"], val_stage=None,
                            prompt=PromptConfig(max_description_words=40, max_prompt_tokens=1024))
    dm.set_processor(None, False, "prompts")
    dm.load()
    examples = dm.train_examples[:: max(1, len(dm.train_examples) // args.prompts)][: args.prompts]
    reward = RetrievalGainReward(args.retriever)
    greedy_q = DQPilotQuestioner(args.policy, batch_size=16)
    sample_q = DQPilotQuestioner(args.policy, batch_size=16, do_sample=True, temperature=args.temperature)

    def score(ex, completions):
        n = len(completions)
        return reward([ex.request] * n, completions, target=[ex.target] * n, initial_description=[ex.request.initial_description] * n,
                      history=[ex.request.history] * n)

    greedy = greedy_q.ask([ex.request for ex in examples])
    distinct, flat_groups, best, greedy_r, teacher_r, sampled_mean = [], 0, [], [], [], []
    for i, ex in enumerate(examples):
        msgs = [questioner_messages(ex.request, max_description_words=40)] * args.group_size
        raws = sample_q.generate_raw(msgs)
        qs = [parse_question(r).text for r in raws]
        distinct.append(len(set(qs)))
        r = score(ex, raws)
        sampled_mean.append(statistics.mean(r))
        flat_groups += int(max(r) - min(r) < 1e-9)
        slot_rewards = score(ex, [format_question("", q) for q in SLOT_QUESTIONS.values()])
        best.append(max(slot_rewards))
        greedy_r.append(score(ex, [greedy[i].raw])[0])
        teacher_r.append(score(ex, [format_question(ex.turn.think, ex.turn.question)])[0])
    out = {
        "prompts": len(examples), "group_size": args.group_size,
        "mean_distinct_questions_per_group": statistics.mean(distinct),
        "groups_with_equal_rewards": flat_groups / len(examples),
        "mean_prg": {"policy_sampled": statistics.mean(sampled_mean), "policy_greedy": statistics.mean(greedy_r),
                     "teacher": statistics.mean(teacher_r), "best_slot_question": statistics.mean(best)},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

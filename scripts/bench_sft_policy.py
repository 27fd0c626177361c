"""Which questioner can learn on a CPU in minutes? SmolLM2-135M + LoRA vs a small model from scratch.

    python scripts/bench_sft_policy.py --corpus data/dialogues/synthcities --repeats 3

On the same SFT batch of corpus turns (the prompts DQ-Pilot trains on: instruction, candidate
descriptions cut to ``--max-description-words``, history; the teacher's reply as the target),
measures for each policy the median time of one SFT step (forward + backward + AdamW) and of one
batched greedy generation of ``--new-tokens`` tokens (what a GRPO rollout and an evaluation
pay), plus the prompt length in each tokenizer. Prints the ratios SmolLM2 / scratch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from datamodules.dialogue import DialogueDataModule, SFTCollator
from dlgpr.dialogue.hf import HFQuestioner, HFQuestionerConfig, find_smollm2_gguf
from dlgpr.models.prompting import PromptConfig
from dlgpr.models.questioner import LoRAConfig, PolicyConfig, ScratchLMConfig, apply_lora, load_policy
from dlgpr.utils import eval_mode


def measure(name: str, policy: PolicyConfig, lora: LoRAConfig | None, examples: list, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    base, processor = load_policy(policy)
    load_s = time.perf_counter() - start
    model = apply_lora(base, lora).train()
    prompt = PromptConfig(max_description_words=args.max_description_words, max_prompt_tokens=args.max_prompt_tokens)
    collate = SFTCollator(processor, with_images=False, prompt=prompt)
    batch = collate(examples)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    steps = []
    for i in range(args.repeats + 1):
        t = time.perf_counter()
        labels = batch["labels"]
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step warms up allocators and kernels
            steps.append(time.perf_counter() - t)
    q = HFQuestioner(model, processor, HFQuestionerConfig(model=name, max_new_tokens=args.new_tokens, batch_size=len(examples),
                                                          max_description_words=args.max_description_words,
                                                          max_prompt_tokens=args.max_prompt_tokens, show_images="never"))
    enc = q.encode([q.encoder.messages(ex.request) for ex in examples])
    gens = []
    for i in range(args.repeats + 1):
        t = time.perf_counter()
        with torch.no_grad(), eval_mode(model):
            model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                           pad_token_id=q.tokenizer.pad_token_id)
        if i:
            gens.append(time.perf_counter() - t)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"policy": name, "load_s": load_s, "params": total, "trainable": trainable,
            "prompt_tokens": int(batch["attention_mask"].sum(1).float().mean()), "sft_step_s": statistics.median(steps),
            "generate_s": statistics.median(gens)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="data/dialogues/synthcities")
    p.add_argument("--places", default="data/synthcities")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--max-description-words", type=int, default=40)
    p.add_argument("--max-prompt-tokens", type=int, default=1024)
    args = p.parse_args()
    torch.manual_seed(0)
    dm = DialogueDataModule(data_dir=args.corpus, place_data_dir=args.places, train_stages=["sft"], val_stage=None)
    dm.set_processor(None, False, "prompts")
    dm.load()
    examples = dm.train_examples[: args.batch]
    directory, gguf = find_smollm2_gguf()
    rows = [
        measure("scratch (Qwen2 4x256, corpus BPE)", PolicyConfig(model=f"{args.corpus}/tokenizer", scratch=ScratchLMConfig()), None, examples, args),
        measure("SmolLM2-135M-Instruct + LoRA r16", PolicyConfig(model=directory, gguf_file=gguf), LoRAConfig(r=16, alpha=32, dropout=0.0), examples, args),
    ]
    print(f"SFT batch of {len(examples)} corpus turns; generation of {args.new_tokens} tokens for the same {len(examples)} prompts; medians of {args.repeats}")
    print("| policy | params | trainable | prompt tokens | load s | SFT step s | generate s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r['params'] / 1e6:.1f} M | {r['trainable'] / 1e6:.2f} M | {r['prompt_tokens']} | {r['load_s']:.1f} | "
              f"{r['sft_step_s']:.2f} | {r['generate_s']:.2f} |")
    print(f"ratio SmolLM2 / scratch: SFT step {rows[1]['sft_step_s'] / rows[0]['sft_step_s']:.1f}x, "
          f"generation {rows[1]['generate_s'] / rows[0]['generate_s']:.1f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

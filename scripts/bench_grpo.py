"""GRPO training-step benchmark: our loop (``GRPOModule``) against trl's ``GRPOTrainer`` on the same work.

    python scripts/bench_grpo.py                          # defaults: 4 prompts x 4 completions x 32 tokens
    python scripts/bench_grpo.py --steps 4 --repeats 2 --json
    python scripts/bench_grpo.py --hidden 128 --max-new-tokens 64

Both sides train the same tiny random Qwen2 causal LM (saved once to a temporary directory, so
both load the same weights; float32, CPU unless ``--device cuda``) with a fresh LoRA adapter
(same peft settings) and per optimiser step:

  * take P prompts (``questioner_messages`` of synthetic question requests, text-only, rendered
    with the tokenizer's ChatML template; the same prompts in the same order on both sides),
  * sample G completions per prompt (temperature 1, no top-k/top-p), each exactly
    ``--max-new-tokens`` long: the end-of-turn token is held back by ``min_new_tokens``, in the
    saved generation config for ours, in ``generation_kwargs`` for trl (``--sample-to-eos``
    lets both stop at the end-of-turn token instead, and the work then differs by chance),
  * score them with the same two cheap python rewards (completion length, DQ-Pilot format),
  * take one AdamW step on the clipped surrogate + beta * k3 KL to the reference policy (the
    adapter disabled), token-level mean (trl's ``loss_type="bnpo"``), num_iterations = 1.

Ours runs through a Lightning ``Trainer`` (the path ``dlgpr fit`` takes), trl through its own
trainer; both with logging, checkpoints and progress bars off. A step's time is the interval
between two consecutive optimiser-step ends (so it holds everything the trainer does per step:
data, generation, reward, reference pass, update, callbacks); the first ``--warmup`` steps of a
run are dropped, a run's time per step is the mean over the next ``--steps``, and the reported
value the median over ``--repeats`` runs. The runs interleave (ours, trl, ours, ...) so drift on a
noisy machine hits both alike. Beside the wall clock, the process' CPU time per step (all its
threads) is reported too: on a machine shared with other jobs it moves less than the wall clock.
On CPU both run on one torch thread unless ``--threads`` says otherwise: with two threads on two
cores that other jobs share, a step's time swung 3-5x from run to run; with one it held within 15 %.
Ours' split into generation / reward / update comes from ``GRPOModule.last_timings`` (update holds
the policy's forward and backward pass and the optimiser step; the reference pass is part of
generation, as ``rollout`` computes it); trl's rollout (generation, reference pass, rewards,
advantages: ``_generate_and_score_completions``) is timed by a subclass.

Known differences that stay: trl also computes the token entropies in its loss pass (for its
metrics) and shuffles the rows of a generation batch; its LM head is patched to compute
log-probabilities in chunks. Ratio trl / ours > 1 means ours is faster.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from datamodules.dialogue import TurnExample
from dlgpr.data.turns import DialogueTurnRecord, Target
from dlgpr.models.prompting import flatten_text, questioner_messages
from dlgpr.models.questioner import LoRAConfig, PolicyConfig
from dlgpr.rewards import FormatReward, WeightedReward
from dlgpr.testing.tiny_models import INIT_STD, tiny_requests, tiny_tokenizer
from dlgpr.utils import require_extra

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


# ---- the shared work ------------------------------------------------------------------------------


def build_model_dir(out: Path, hidden: int, layers: int, force_length: int | None, seed: int = 0) -> Path:
    """A random Qwen2 causal LM (``hidden`` wide, ``layers`` deep) and the tiny ChatML tokenizer, saved to ``out``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    heads = max(2, hidden // 16)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=4096,
        initializer_range=INIT_STD, tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    if force_length:
        # ours reads it from here (rollout leaves min_new_tokens to the model's generation config)
        model.generation_config.min_new_tokens = force_length
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def make_examples(n: int, pool: int, candidates: int) -> list[TurnExample]:
    """``n`` corpus-like turns cycling through ``pool`` distinct text-only requests (varied prompt lengths)."""
    reqs = tiny_requests(pool, n_candidates=candidates, with_images=False)
    out = []
    for i in range(n):
        req = reqs[i % pool]
        turn = DialogueTurnRecord(
            key=f"d{req.query_id:09d}_r{req.round}", place_id=req.query_id, round=req.round,
            initial_description=req.initial_description,
            history=[{"question": t.question, "answer": t.answer} for t in req.history],
            candidates=[c.key for c in req.candidates], think="Compare the facades.", question="What colour is the facade?",
            answer="Red.", prg=0.0, sa=0.0, ddi=0.0,
        )
        out.append(TurnExample(turn=turn, request=req, target=Target(place_id=req.query_id, description=req.candidates[0].description)))
    return out


def _text(completion: Any) -> str:
    """Ours passes strings; trl passes conversational completions as ``[{"role": "assistant", "content": ...}]``."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


class LengthReward:
    """Longer is better, saturating at ``cap`` characters (cheap and deterministic). Records the
    completion token counts when the caller passes ``completion_ids`` (trl does)."""

    def __init__(self, cap: int = 200) -> None:
        self.cap = cap
        self.token_lengths: list[int] = []

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **batch: Any) -> list[float]:
        ids = batch.get("completion_ids")
        if ids is not None:
            self.token_lengths.extend(len(c) for c in ids)
        return [min(len(_text(c)), self.cap) / self.cap for c in completions]


def format_text_reward(prompts: Sequence[Any], completions: Sequence[Any], **batch: Any) -> list[float]:
    """:class:`dlgpr.rewards.FormatReward` on the completion text (either caller's shape)."""
    return FormatReward()(prompts, [_text(c) for c in completions])


def reward_functions() -> tuple[LengthReward, Any]:
    return LengthReward(), format_text_reward


# ---- timing ---------------------------------------------------------------------------------------


def now() -> tuple[float, float]:
    """(wall clock, CPU time of this process, all its threads)."""
    return time.perf_counter(), time.process_time()


def per_step(ends: list[tuple[float, float]], warmup: int, steps: int) -> dict[str, float]:
    """Mean wall and CPU seconds per step over the ``steps`` steps after ``warmup`` (from consecutive step ends)."""
    if len(ends) < warmup + steps:
        raise RuntimeError(f"only {len(ends)} steps ran, expected {warmup + steps}")
    (w0, c0), (w1, c1) = ends[warmup - 1], ends[warmup + steps - 1]
    return {"s_per_step": (w1 - w0) / steps, "cpu_s_per_step": (c1 - c0) / steps}


def run_ours(args: argparse.Namespace, model_dir: Path, examples: list[TurnExample], work: Path) -> dict[str, Any]:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from dlgpr.modules.dqpilot import GRPOConfig, GRPOModule

    class TimedGRPO(GRPOModule):
        """Records the completion token counts of every rollout (a check that both sides do the same
        work) and the time of the reference pass (inside ``rollout``, so inside "generation")."""

        token_lengths: list[int]
        reference_s: float

        def rollout(self, *a: Any, **kw: Any) -> Any:
            roll = super().rollout(*a, **kw)
            self.token_lengths.extend(roll.completion_mask.sum(1).tolist())
            return roll

        def reference_logp(self, roll: Any) -> Any:
            start = time.perf_counter()
            out = super().reference_logp(roll)
            self.reference_s = time.perf_counter() - start
            return out

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.ends: list[tuple[float, float]] = []
            self.splits: list[dict[str, float]] = []

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.ends.append(now())
            self.splits.append({**getattr(module, "last_timings", {}), "reference": module.reference_s})

    length, fmt = reward_functions()
    torch.manual_seed(args.seed)
    module = TimedGRPO(
        policy=PolicyConfig(model=str(model_dir), dtype="float32"),
        rewards=[WeightedReward("length", length, 1.0), WeightedReward("format", fmt, 1.0)],
        grpo=GRPOConfig(group_size=args.group_size, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, epsilon=0.2,
                        beta=args.beta, num_iterations=1, max_grad_norm=1.0),
        lora=LoRAConfig(r=args.lora_r, alpha=2 * args.lora_r, dropout=args.lora_dropout, target_modules=LORA_TARGETS),
        lr=args.lr, export_dir=str(work / "ours_export"), seed=args.seed,
    )
    module.token_lengths, module.reference_s = [], 0.0
    clock = StepClock()
    n_steps = args.warmup + args.steps
    trainer = pl.Trainer(
        accelerator=args.device, devices=1, max_steps=n_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[clock], default_root_dir=str(work / "ours"),
    )
    # a spare epoch of batches in case a step aborts (it then does not count as an optimiser step)
    loader = DataLoader(examples * 2, batch_size=args.prompts, shuffle=False, collate_fn=list, num_workers=0)
    trainer.fit(module, train_dataloaders=loader)
    if module.aborted_steps:
        print(f"warning: ours aborted {module.aborted_steps} step(s); the timings include them", file=sys.stderr)
    kept = clock.splits[args.warmup : n_steps]
    return {
        **per_step(clock.ends, args.warmup, args.steps),
        "split": {k: statistics.mean(s[k] for s in kept) for k in ("generation", "reward", "update", "reference")},
        "token_lengths": module.token_lengths,
    }


def run_trl(args: argparse.Namespace, model_dir: Path, examples: list[TurnExample], work: Path) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    trl = require_extra("trl", "the trl comparison of bench_grpo.py")
    GRPOConfig, GRPOTrainer = trl.GRPOConfig, trl.GRPOTrainer

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[tuple[float, float]] = []
            self.rollouts: list[float] = []

        def on_step_end(self, targs: Any, state: Any, control: Any, **kw: Any) -> None:
            self.ends.append(now())

    class TimedGRPOTrainer(GRPOTrainer):
        """Times trl's rollout: generation, reference pass, rewards and advantages in one call."""

        def _generate_and_score_completions(self, inputs: Any) -> Any:
            start = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            clock.rollouts.append(time.perf_counter() - start)
            return out

    n_steps = args.warmup + args.steps
    rows = [{"prompt": flatten_text(questioner_messages(ex.request))} for ex in examples]
    config = GRPOConfig(
        output_dir=str(work / "trl"),
        # trl counts completions, not prompts: one optimiser step = P prompts x G completions
        per_device_train_batch_size=args.prompts * args.group_size, num_generations=args.group_size,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        max_steps=n_steps, learning_rate=args.lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
        beta=args.beta, epsilon=0.2, loss_type="bnpo", scale_rewards="group", reward_weights=[1.0, 1.0],
        temperature=1.0, top_p=1.0, top_k=0, max_completion_length=args.max_new_tokens,
        generation_kwargs={"min_new_tokens": args.max_new_tokens} if not args.sample_to_eos else None,
        use_vllm=False, shuffle_dataset=False, remove_unused_columns=False,
        # trl's defaults that would change the work: bf16 autocast and (gradient_)activation checkpointing on
        bf16=False, fp16=False, activation_checkpointing=False, use_cpu=args.device == "cpu",
        report_to="none", logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True,
        log_completions=False, dataloader_num_workers=0, seed=args.seed,
    )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=args.lora_dropout, target_modules=LORA_TARGETS,
                             task_type="CAUSAL_LM")
    length, fmt = reward_functions()
    clock = StepClock()
    trainer = TimedGRPOTrainer(model=model, reward_funcs=[length, fmt], args=config, train_dataset=Dataset.from_list(rows),
                               processing_class=tok, peft_config=peft_config, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # it prints the end-of-training metrics even with logging off
    trainer.train()
    return {**per_step(clock.ends, args.warmup, args.steps), "token_lengths": length.token_lengths,
            "rollout_s": statistics.mean(clock.rollouts[args.warmup : n_steps])}


# ---- main -----------------------------------------------------------------------------------------


def check_prompts(model_dir: Path, examples: list[TurnExample]) -> tuple[int, int]:
    """Both sides must feed the same prompt tokens: ours renders and tokenizes in two calls, trl in one."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    lengths = []
    for ex in examples:
        msgs = flatten_text(questioner_messages(ex.request))
        ours = tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        theirs = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        if list(ours) != list(theirs):
            raise AssertionError("the two sides tokenize the prompts differently")
        lengths.append(len(ours))
    return min(lengths), max(lengths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="timed optimiser steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run (>= 1)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side (interleaved); medians are reported")
    ap.add_argument("--prompts", type=int, default=4, help="P: prompts per optimiser step")
    ap.add_argument("--group-size", "--group_size", dest="group_size", type=int, default=4, help="G: completions per prompt")
    ap.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=32)
    ap.add_argument("--sample-to-eos", "--sample_to_eos", dest="sample_to_eos", action="store_true",
                    help="let completions stop at the end-of-turn token (default: exactly max-new-tokens)")
    ap.add_argument("--hidden", type=int, default=64, help="width of the tiny Qwen2 (heads = hidden / 16)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=3, help="candidates per request (sets the prompt length)")
    ap.add_argument("--lora-r", "--lora_r", dest="lora_r", type=int, default=8)
    ap.add_argument("--lora-dropout", "--lora_dropout", dest="lora_dropout", type=float, default=0.05)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads on CPU (default 1: steadiest on a shared machine; 0 keeps torch's default)")
    ap.add_argument("--only", choices=("both", "ours", "trl"), default="both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    ap.add_argument("--verbose", action="store_true", help="keep the libraries' warnings, logs and progress bars")
    args = ap.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        ap.error("--warmup, --steps and --repeats must be >= 1")
    if args.threads > 0 and args.device == "cpu":
        torch.set_num_threads(args.threads)
    if not args.verbose:
        warnings.filterwarnings("ignore")
        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "trl", "accelerate", "peft", "datasets"):
            logging.getLogger(name).setLevel(logging.ERROR)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory(prefix="bench_grpo_") as tmp:
        work = Path(tmp)
        model_dir = build_model_dir(work / "model", args.hidden, args.layers, None if args.sample_to_eos else args.max_new_tokens, args.seed)
        n_steps = args.warmup + args.steps
        examples = make_examples(args.prompts * n_steps, pool=max(2 * args.prompts, 8), candidates=args.candidates)
        p_min, p_max = check_prompts(model_dir, examples)
        print(f"device {args.device} ({torch.get_num_threads()} threads); tiny Qwen2 hidden {args.hidden} x {args.layers} layers, "
              f"LoRA r={args.lora_r}; P={args.prompts} prompts ({p_min}-{p_max} tokens) x G={args.group_size} completions x "
              f"{args.max_new_tokens} new tokens{' (to eos)' if args.sample_to_eos else ' (exactly)'}, beta={args.beta}; "
              f"{args.warmup} warmup + {args.steps} timed steps, {args.repeats} repeats")

        ours: list[dict[str, Any]] = []
        trl: list[dict[str, Any]] = []
        for r in range(args.repeats):
            if args.only in ("both", "ours"):
                ours.append(run_ours(args, model_dir, examples, work / f"r{r}"))
                print(f"  repeat {r + 1}: ours {ours[-1]['s_per_step']:.3f} s/step ({ours[-1]['cpu_s_per_step']:.3f} CPU s)", flush=True)
            if args.only in ("both", "trl"):
                trl.append(run_trl(args, model_dir, examples, work / f"r{r}"))
                print(f"  repeat {r + 1}: trl  {trl[-1]['s_per_step']:.3f} s/step ({trl[-1]['cpu_s_per_step']:.3f} CPU s)", flush=True)

    result: dict[str, Any] = {
        "device": args.device, "threads": torch.get_num_threads(), "hidden": args.hidden, "layers": args.layers, "prompts": args.prompts,
        "group_size": args.group_size, "max_new_tokens": args.max_new_tokens, "sample_to_eos": args.sample_to_eos,
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "prompt_tokens": [p_min, p_max],
    }
    print()
    print(f"{'':20s}{'wall s/step':>12s}{'steps/s':>9s}{'CPU s/step':>12s}{'completion tokens':>20s}   runs (wall s/step)")
    for key, name, runs in (("ours", "ours (GRPOModule)", ours), ("trl", "trl GRPOTrainer", trl)):
        if not runs:
            continue
        wall = statistics.median(r["s_per_step"] for r in runs)
        cpu = statistics.median(r["cpu_s_per_step"] for r in runs)
        toks = [t for r in runs for t in r["token_lengths"]]
        tok_desc = f"{min(toks)}-{max(toks)} (mean {statistics.mean(toks):.1f})" if toks else "?"
        print(f"{name:20s}{wall:12.3f}{1 / wall:9.2f}{cpu:12.3f}{tok_desc:>20s}   {[round(r['s_per_step'], 3) for r in runs]}")
        result.update({f"{key}_s_per_step": wall, f"{key}_steps_per_s": 1 / wall, f"{key}_cpu_s_per_step": cpu,
                       f"{key}_runs": [r["s_per_step"] for r in runs], f"{key}_cpu_runs": [r["cpu_s_per_step"] for r in runs],
                       f"{key}_completion_tokens_mean": statistics.mean(toks) if toks else None})
    if ours and trl:
        ratio = result["trl_s_per_step"] / result["ours_s_per_step"]
        ratio_cpu = result["trl_cpu_s_per_step"] / result["ours_cpu_s_per_step"]
        pairs = statistics.median(t["s_per_step"] / o["s_per_step"] for o, t in zip(ours, trl))
        result.update(ratio_trl_over_ours=ratio, ratio_trl_over_ours_cpu=ratio_cpu, ratio_trl_over_ours_pairs=pairs)
        print(f"ratio trl / ours: {ratio:.2f} wall, {ratio_cpu:.2f} CPU time, {pairs:.2f} median of back-to-back pairs"
              "  (> 1: ours is faster; target >= 1.00)")
    if ours:
        split = {k: statistics.median(r["split"][k] for r in ours) for k in ("generation", "reward", "update")}
        total = sum(split.values())
        ref = statistics.median(r["split"]["reference"] for r in ours)
        print("ours, per step (median of run means): " + ", ".join(
            f"{k} {v:.4f} s ({v / total:.0%})" for k, v in split.items())
              + f"; of generation, the reference pass {ref:.3f} s; other (trainer, data) {max(result['ours_s_per_step'] - total, 0.0):.3f} s")
        result["ours_split_s"] = {**split, "reference_in_generation": ref}
        result["ours_split_share"] = {k: v / total for k, v in split.items()}
    if trl:
        roll = statistics.median(r["rollout_s"] for r in trl)
        print(f"trl, per step: generate + reference + rewards {roll:.3f} s; the rest (update, trainer) {result['trl_s_per_step'] - roll:.3f} s"
              + (f"  (ours: {split['generation'] + split['reward']:.3f} s and {result['ours_s_per_step'] - split['generation'] - split['reward']:.3f} s)"
                 if ours else ""))
        result["trl_rollout_s"] = roll
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()

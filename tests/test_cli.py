"""End to end through ``python -m dlgpr`` (LightningCLI): parse, fit, resume, validate, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlgpr.cli import main
from tests.helpers.cli_args import tiny_args
from tests.helpers.shards import make_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
TRAIN_CONFIGS = [c for c in CONFIGS if c.parent == ROOT / "configs"]
EVAL_CONFIGS = [c for c in CONFIGS if c.parent.name == "eval"]
DIALOGUE_EVAL_CONFIGS = [c for c in EVAL_CONFIGS if not c.stem.startswith("geo_")]  # geo_*: scripts/evaluate_geo.py (tests/scripts)
ABLATION_CONFIGS = [c for c in CONFIGS if c.parent.name == "ablation"]
OVERRIDE_CONFIGS = [c for c in CONFIGS if c.parent.name == "overrides"]
BUILD_CONFIGS = [c for c in CONFIGS if c.parent.name == "build"]
PRETRAIN_CONFIGS = [c for c in CONFIGS if c.parent.name == "pretrain"]
WORLD_CONFIGS = [c for c in CONFIGS if c.parent.name == "world"]


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dlgpr"])  # LightningCLI(args=...) must not also see pytest's argv


def test_configs_are_all_covered():
    covered = set(TRAIN_CONFIGS) | set(EVAL_CONFIGS) | set(ABLATION_CONFIGS) | set(OVERRIDE_CONFIGS) | set(BUILD_CONFIGS) | set(PRETRAIN_CONFIGS) | set(WORLD_CONFIGS)
    assert covered == set(CONFIGS)
    assert TRAIN_CONFIGS and EVAL_CONFIGS and OVERRIDE_CONFIGS and BUILD_CONFIGS and PRETRAIN_CONFIGS and WORLD_CONFIGS


def _endpoints(node):
    """Every mapping with a ``base_url`` in a parsed config (ChatAPIConfigs, wherever they sit)."""
    if isinstance(node, dict):
        if "base_url" in node:
            yield node
        for value in node.values():
            yield from _endpoints(value)
    elif isinstance(node, list):
        for value in node:
            yield from _endpoints(value)


def test_local_endpoints_name_the_model_as_vllm_serves_it():
    """vLLM / SGLang serve a model under the hub id they were given (``Qwen/Qwen2.5-72B-Instruct``);
    a bare ``Qwen2.5-72B-Instruct`` fails every request with 404 unless the server was started with
    ``--served-model-name``, which no config says."""
    import yaml

    local = [(c.name, e["model"]) for c in CONFIGS for e in _endpoints(yaml.safe_load(c.read_text()))
             if e["base_url"].startswith(("http://127.0.0.1", "http://localhost"))]
    assert ("dqpilot_grpo_qwen25vl7b.yaml", "Qwen/Qwen2.5-72B-Instruct") in local
    assert [(name, model) for name, model in local if "/" not in model] == []


@pytest.mark.parametrize("config", WORLD_CONFIGS, ids=[c.stem for c in WORLD_CONFIGS])
def test_world_configs_are_valid_synthcities_settings(config):
    """A world preset holds SynthCitiesConfig fields only, with values the config accepts."""
    import dataclasses

    import yaml

    from dlgpr.data.synth.generate import SynthCitiesConfig

    settings = yaml.safe_load(config.read_text())
    assert set(settings) <= {f.name for f in dataclasses.fields(SynthCitiesConfig)}
    SynthCitiesConfig(**settings)  # validates every field
    assert {c.stem for c in ABLATION_CONFIGS} == {"clip77", "baseline", "token_selection", "hsdm", "hi", "full"}


@pytest.mark.parametrize("config", ABLATION_CONFIGS, ids=[c.stem for c in ABLATION_CONFIGS])
def test_ablation_overrides_apply_to_the_main_config(config, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    make_tiny_dataset(tmp_path / "d")
    cli = main([*tiny_args(tmp_path / "d"), "--config", str(config)], run=False)
    model, loss = cli.model.model, cli.model.loss_fn
    row = config.stem
    expected_taps = {"clip77": [], "baseline": [], "token_selection": [4]}.get(row, [1, 2, 3, 4])
    assert model.config.taps == expected_taps
    assert (loss.lambda_h > 0) == (row not in ("clip77", "baseline"))
    assert (loss.hi_weight > 0) == (row in ("hi", "full"))
    assert (loss.lambda_vpr > 0) == (row == "full")
    assert model.backbone.context_length == (77 if row == "clip77" else 32)  # only the CLIP row keeps CLIP's 77 positions


@pytest.mark.parametrize("config", TRAIN_CONFIGS + PRETRAIN_CONFIGS, ids=[str(c.relative_to(ROOT)) for c in TRAIN_CONFIGS + PRETRAIN_CONFIGS])
def test_every_config_parses(config, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:  # --print_config parses, validates and exits 0
        main(["fit", "--config", str(config), "--print_config"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "default_hp_metric: false" in printed and "default_hp_metric: true" not in printed


@pytest.mark.parametrize("config", OVERRIDE_CONFIGS, ids=[c.stem for c in OVERRIDE_CONFIGS])
def test_override_configs_parse_on_top_of_the_main_config(config, monkeypatch, tmp_path, capsys):
    # an override of another job names that job's config in the file name (dqpilot_grpo_*: configs/dqpilot_grpo.yaml)
    base = "dqpilot_grpo.yaml" if config.stem.startswith("dqpilot_grpo_") else "cmpl.yaml"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(ROOT / "configs" / base), "--config", str(config), "--print_config"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "default_hp_metric: true" not in printed
    if config.stem == "dqpilot_grpo_log_rank":
        assert "gain: log_rank" in printed and "version: grpo_log_rank" in printed and "grpo_log_rank/policy" in printed


def test_dialogue_retriever_override_turns_on_dialogue_style_queries(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    make_tiny_dataset(tmp_path / "d")
    cli = main([*tiny_args(tmp_path / "d"), "--config", str(ROOT / "configs" / "overrides" / "dqpilot_retriever.yaml")], run=False)
    assert cli.datamodule.text_augment.query_prob == 0.5 and cli.datamodule.text_augment.max_sentences == 5


@pytest.mark.parametrize("config", BUILD_CONFIGS, ids=[c.stem for c in BUILD_CONFIGS])
def test_every_build_config_parses(config):
    # GSV-Cities builder, GLOBE's geo-reasoning distillation, or the SynthCities dialogue corpus
    kind = "dqcities" if config.stem.startswith("dqcities") else "geo" if config.stem.startswith("geo_reasoning") else "dialogues"
    script = {"dqcities": "build_dqcities.py", "geo": "build_geo_reasoning.py", "dialogues": "build_dialogues.py"}[kind]
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--config", str(config), "--print_config"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = {"dqcities": ("text_expansion_v1", "teacher_v1", "yolov8x-worldv2", "prg_threshold"),
                "geo": ("geo_teacher_v1" if "mp16" in config.stem else "WorldGeoTeacher", "min_grounded", "gps:"),
                "dialogues": ("OracleTeacherQuestioner", "prg_threshold")}[kind]
    assert all(e in out.stdout for e in expected), out.stdout[-2000:]


@pytest.mark.parametrize("config", DIALOGUE_EVAL_CONFIGS, ids=[str(c.relative_to(ROOT)) for c in DIALOGUE_EVAL_CONFIGS])
def test_every_dialogue_eval_config_parses(config):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_dialogue.py"), "--config", str(config), "--ckpt", "x.ckpt", "--print_config"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    import yaml

    named = [q["questioner"]["class_path"] for q in yaml.safe_load(config.read_text())["questioners"]]
    assert named and all(c in out.stdout for c in named)


def test_embedded_configs_instantiate(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    make_tiny_dataset(tmp_path / "d")
    cli = main(tiny_args(tmp_path / "d"), run=False)
    assert type(cli.model).__name__ == "CMPLModule"
    assert cli.model.model.config.taps == [1, 2, 3, 4] and cli.model.clip.context_length == 32
    assert type(cli.datamodule).__name__ == "DQCitiesDataModule"
    assert cli.model.lr == 1e-4 and cli.model.head_lr == 1e-3


def test_main_config_fine_tunes_the_shipped_pretrained_towers(monkeypatch, tmp_path):
    """configs/cmpl.yaml as shipped: dlgpr-mini from the packaged SynthCities weights, their learnt
    contrastive scale, the native 248-token context."""
    from safetensors.torch import load_file

    from dlgpr.models.clip_backbone import resolve_pretrained

    monkeypatch.chdir(tmp_path)
    make_tiny_dataset(tmp_path / "d")
    cli = main(["--config", str(ROOT / "configs" / "cmpl.yaml"), "--data.init_args.data_dir", str(tmp_path / "d"),
                "--data.init_args.synthetic", "null", "--data.init_args.num_workers", "0"], run=False)
    clip = cli.model.clip
    assert clip.config.model_name == "dlgpr-mini" and clip.context_length == 248
    shipped = load_file(resolve_pretrained("dlgpr-mini", "synthcities"))
    own = clip.model.state_dict()
    assert all(torch.equal(own[k], v.to(own[k].dtype)) for k, v in shipped.items() if k != "logit_scale")
    assert float(cli.model.logit_scale.detach()) == pytest.approx(float(shipped["logit_scale"].float().exp()), rel=1e-3)


def test_dotted_overrides_reach_the_objects(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    make_tiny_dataset(tmp_path / "d")
    cli = main(tiny_args(tmp_path / "d", "--model.lr", "1e-4", "--trainer.max_epochs", "3"), run=False)
    assert cli.model.lr == 1e-4 and cli.trainer.max_epochs == 3


def test_fit_changes_parameters_saves_and_resumes(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d"
    make_tiny_dataset(data)
    cli = main(tiny_args(data, "--trainer.limit_train_batches", "3", "--trainer.max_epochs", "1"), run=False)
    before = {k: v.clone() for k, v in cli.model.state_dict().items()}
    cli.trainer.fit(cli.model, cli.datamodule)
    after = cli.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > 0.9 * len([k for k, v in before.items() if v.dtype.is_floating_point and not k.endswith("model.logit_scale")])
    assert any(k.startswith("model.queries") for k in changed) and any(k.startswith("model.extractor.") for k in changed)
    assert cli.trainer.global_step == 3
    ckpt = Path(cli.trainer.checkpoint_callback.last_model_path)
    assert ckpt.is_file()
    log_dir = Path(cli.trainer.log_dir)
    assert any(log_dir.glob("events.out.tfevents.*"))  # TensorBoard by default
    lines = (log_dir / "retrieval_val.jsonl").read_text().splitlines()
    assert 0.0 <= json.loads(lines[-1])["val/recall@1"] <= 1.0
    dialogue = json.loads((log_dir / "dialogue_val.jsonl").read_text().splitlines()[-1])
    cumulative = [dialogue[f"round{t}/recall@1"] for t in range(6)]
    assert cumulative == sorted(cumulative) and dialogue["bri"] >= 0.0  # cumulative recall never drops
    # the per-query ranks of that evaluation give back its numbers (what paired tests between runs use)
    from dlgpr.metrics import bri, cumulative_recall

    per_query = json.loads((log_dir / "dialogue_val_ranks.json").read_text())
    ranks = torch.tensor(per_query["ranks"], dtype=torch.float64)
    assert ranks.shape == (len(per_query["query_id"]), 6) == (len(per_query["place_id"]), 6)
    assert cumulative_recall(ranks, [1])[1].tolist() == pytest.approx(cumulative)
    assert bri(ranks) == pytest.approx(dialogue["bri"])

    # resume: the step counter and the weights continue from the checkpoint
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 3
    cli2 = main(tiny_args(data, "--trainer.limit_train_batches", "3", "--trainer.max_epochs", "2"), run=False)
    cli2.trainer.fit(cli2.model, cli2.datamodule, ckpt_path=str(ckpt))
    assert cli2.trainer.global_step == 6 and cli2.trainer.current_epoch == 2
    resumed = cli2.model.state_dict()
    key = "model.backbone.model.visual.conv1.weight"
    assert not torch.equal(resumed[key], after[key])  # trained on
    assert (resumed[key] - after[key]).abs().max() < (after[key] - before[key]).abs().max() * 10  # from the checkpoint, not from scratch


def test_validate_and_test_report_recall(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    make_tiny_dataset(tmp_path / "d")
    cli = main(["validate", *tiny_args(tmp_path / "d")])
    assert set(cli.trainer.callback_metrics) >= {"val/recall@1", "val/recall@5", "val/recall@10", "val/global/recall@1", "dialogue/round5/recall@1", "dialogue/bri"}
    cli = main(["test", *tiny_args(tmp_path / "d")])
    r1, r10 = float(cli.trainer.callback_metrics["test/recall@1"]), float(cli.trainer.callback_metrics["test/recall@10"])
    assert 0.0 <= r1 <= r10 <= 1.0


def _run_dlgpr(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dlgpr", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _last_json(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[-1])


def test_ddp_two_cpu_processes_fit_and_match_single_process_eval(tmp_path):
    data = tmp_path / "d"
    make_tiny_dataset(data, places={"train": 12, "val": 6, "test": 2}, per_shard=4)
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]
    fit = _run_dlgpr(["fit", *tiny_args(data, "--trainer.max_steps", "2", "--trainer.logger.init_args.version", "fit"), *ddp], tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = next((tmp_path / "lightning_logs" / "fit").rglob("last.ckpt"))
    one = _run_dlgpr(["validate", *tiny_args(data, "--trainer.logger.init_args.version", "one"), "--ckpt_path", str(ckpt)], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run_dlgpr(["validate", *tiny_args(data, "--trainer.logger.init_args.version", "two"), *ddp, "--ckpt_path", str(ckpt)], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    r1 = _last_json(tmp_path / "lightning_logs" / "one" / "retrieval_val.jsonl")
    r2 = _last_json(tmp_path / "lightning_logs" / "two" / "retrieval_val.jsonl")
    assert r1["queries"] == r2["queries"] == 2 * 6 * 2  # every val description once, none lost or doubled
    for k in ("val/recall@1", "val/recall@5", "val/recall@10"):
        assert r1[k] == pytest.approx(r2[k], abs=1e-6)
    d1 = _last_json(tmp_path / "lightning_logs" / "one" / "dialogue_val.jsonl")
    d2 = _last_json(tmp_path / "lightning_logs" / "two" / "dialogue_val.jsonl")
    for k in ("round0/recall@1", "round5/recall@1", "round5/recall@5", "bri"):
        assert d1[k] == pytest.approx(d2[k], abs=1e-6)


def test_predict_embeds_every_sample_of_the_split(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    manifest = make_tiny_dataset(tmp_path / "d")
    cli = main(tiny_args(tmp_path / "d"), run=False)
    predictions = cli.trainer.predict(cli.model, cli.datamodule)
    keys = [k for p in predictions for k in p["key"]]
    assert len(keys) == len(set(keys)) == manifest.counts()["test"]["samples"]
    emb = torch.cat([p["image_emb"] for p in predictions])
    assert emb.shape == (len(keys), cli.model.embed_dim)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(keys)), atol=1e-5)


def test_evaluate_dialogue_script_on_a_fitted_checkpoint(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d"
    make_tiny_dataset(data)
    cli = main(tiny_args(data, "--trainer.limit_train_batches", "2", "--trainer.max_epochs", "1"), run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    ckpt = cli.trainer.checkpoint_callback.last_model_path

    spec = importlib.util.spec_from_file_location("evaluate_dialogue", ROOT / "scripts" / "evaluate_dialogue.py")
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "evaluate_dialogue", script)  # dataclasses look their module up
    spec.loader.exec_module(script)
    from dlgpr.dialogue.questioners import OracleTeacherQuestioner, PlugIRQuestioner, RandomQuestioner

    entries = [script.QuestionerEntry("Random", RandomQuestioner()), script.QuestionerEntry("PlugIR", PlugIRQuestioner()),
               script.QuestionerEntry("Teacher", OracleTeacherQuestioner(), top_k=20)]
    out = tmp_path / "eval"
    summaries = script.evaluate(ckpt, entries, data_dir=str(data), split="test", rounds=3, report_rounds=[3], out_dir=str(out),
                                num_workers=0, noise_rates=[0.0, 0.5], noise_questioners=["PlugIR", "Teacher"], with_images=True)
    assert set(summaries) == {"Random", "PlugIR", "Teacher"}
    # one dialogue figure per questioner; the noise sweep for both named questioners, rate 0 = the clean run
    assert sorted(p.name for p in out.glob("dialogue_*.png")) == ["dialogue_plugir.png", "dialogue_random.png", "dialogue_teacher.png"]
    noise_rows = [line for line in (out / "noise.md").read_text().splitlines() if line.startswith(("| PlugIR |", "| Teacher |"))]
    assert len(noise_rows) == 4 and (out / "noise.png").stat().st_size > 0
    noisy = json.loads((out / "noise_results.json").read_text())["results"]
    clean_ranks = [q["ranks"] for q in json.loads((out / "results.json").read_text())["results"]["Teacher"]["queries"]]
    assert [q["ranks"] for q in noisy["Teacher, error rate 0.00"]["queries"]] == clean_ranks
    with pytest.raises(ValueError, match="noise_questioners"):
        script.evaluate(ckpt, entries[:1], data_dir=str(data), split="test", rounds=1, report_rounds=[1], out_dir=str(tmp_path / "e2"),
                        num_workers=0, noise_rates=[0.0], noise_questioners=["Nobody"], figure_query=None)
    table = (out / "table.md").read_text().splitlines()
    assert table[2].startswith("| Initial | 0 |") and len(table) == 3 + 3  # header, rule, Initial, one row per questioner
    results = json.loads((out / "results.json").read_text())
    assert results["queries"] == 8 and len(results["results"]["Teacher"]["queries"]) == 8  # one query per test place
    assert (out / "recall.png").stat().st_size > 0 and (out / "noise.md").is_file()

    # the significance script reads what the evaluation wrote (two methods from one file)
    spec = importlib.util.spec_from_file_location("significance", ROOT / "scripts" / "significance.py")
    significance = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(significance)
    report = significance.main([str(out / "results.json"), str(out / "results.json"), "--a", "Teacher", "--b", "Random", "--rounds", "3"])
    assert report["queries"] == 8 and [r["metric"] for r in report["rows"]] == ["round3/recall@1", "round3/recall@5", "bri"]
    teacher = results["results"]["Teacher"]["summary"]
    assert report["rows"][0]["a"] == pytest.approx(teacher["round3/recall@1"]) and report["rows"][2]["a"] == pytest.approx(teacher["bri"])


# ---- where runs land, and resuming ----------------------------------------------------------------


def _scalar_tags(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in log_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def test_logs_config_and_checkpoints_go_under_default_root_dir(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    make_tiny_dataset(tmp_path / "d")
    root = tmp_path / "runs" / "exp1"
    cli = main(["fit", *tiny_args(tmp_path / "d", "--trainer.default_root_dir", str(root), "--trainer.limit_train_batches", "2",
                                  "--trainer.max_epochs", "1")])
    run = root / "lightning_logs" / "version_0"
    assert Path(cli.trainer.log_dir) == run
    assert any(run.glob("events.out.tfevents.*")) and (run / "config.yaml").is_file() and (run / "retrieval_val.jsonl").is_file()
    assert Path(cli.trainer.checkpoint_callback.last_model_path) == run / "checkpoints" / "last.ckpt"
    assert not (tmp_path / "lightning_logs").exists()  # nothing where the flag did not point
    tags = _scalar_tags(run)
    assert "val/recall@1" in tags and "hp_metric" not in tags  # TensorBoard's placeholder metric is off
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images: set[str] = set()
    for events in run.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        images |= set(acc.Tags()["images"])
    assert {"dialogue/recall_vs_round", "dialogue/figure_0"} <= images  # the dialogue callback's figures


def test_a_pinned_version_never_mixes_two_runs_in_one_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    make_tiny_dataset(tmp_path / "d")
    pinned = tiny_args(tmp_path / "d", "--trainer.logger.init_args.version", "pinned", "--trainer.limit_train_batches", "2",
                       "--trainer.max_epochs", "1")
    main(["fit", *pinned])
    folder = tmp_path / "lightning_logs" / "pinned"
    events = sorted(folder.glob("events.out.tfevents.*"))
    with pytest.raises(SystemExit, match="already holds a run"):
        main(["fit", *pinned])
    with pytest.raises(SystemExit, match="already holds a run"):
        main(["validate", *pinned])
    assert sorted(folder.glob("events.out.tfevents.*")) == events  # nothing written by the refused runs
    # resuming that run is what the folder is for
    resumed = main(["fit", *pinned[:-2], "--trainer.max_epochs", "2", "--ckpt_path", str(folder / "checkpoints" / "last.ckpt")])
    assert resumed.trainer.global_step == 4
    # an unpinned run takes the next free version instead
    cli = main(["fit", *tiny_args(tmp_path / "d", "--trainer.limit_train_batches", "1", "--trainer.max_epochs", "1")])
    assert Path(cli.trainer.log_dir).name == "version_0"


def test_a_killed_run_resumed_from_its_checkpoint_ends_as_the_uninterrupted_run(tmp_path):
    """configs/cmpl.yaml (tiny) for 3 epochs, SIGKILLed once an end-of-epoch checkpoint exists and
    resumed with --ckpt_path: same metrics and the same weights as the run that was not stopped."""
    import shutil
    import signal
    import time

    data = tmp_path / "d"
    make_tiny_dataset(data)
    # every epoch's weights too, to compare the two runs epoch by epoch (save_top_k -1 keeps them all;
    # monitor/mode only make its state key differ from the config's two checkpoints)
    every_epoch = ('{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"filename": "every-{epoch}", '
                   '"save_top_k": -1, "monitor": "val/recall@1", "mode": "min"}}')
    args = tiny_args(data, "--trainer.max_epochs", "3", f"--trainer.callbacks+={every_epoch}")
    full = _run_dlgpr(["fit", *args, "--trainer.logger.init_args.version", "full"], tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dlgpr", "fit", *args, "--trainer.logger.init_args.version", "killed"], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "lightning_logs" / "killed" / "checkpoints" / "last.ckpt"
    saved, deadline = None, time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        if last.is_file():
            try:
                saved = torch.load(last, map_location="cpu", weights_only=False)
            except Exception:  # still being written
                saved = None
            if saved is not None:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.05)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert saved is not None and saved["epoch"] < 2  # killed with epochs left to run
    resume_from = tmp_path / "resume.ckpt"
    shutil.copy(last, resume_from)
    resumed = _run_dlgpr(["fit", *args, "--trainer.logger.init_args.version", "killed", "--ckpt_path", str(resume_from)], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    logs = tmp_path / "lightning_logs"
    def metrics(path: Path) -> dict:  # the record without its wall-clock field
        return {k: v for k, v in _last_json(path).items() if k != "fit_seconds"}

    final = metrics(logs / "full" / "retrieval_val.jsonl")
    assert final["epoch"] == 2 and final == metrics(logs / "killed" / "retrieval_val.jsonl")
    assert _last_json(logs / "full" / "dialogue_val.jsonl") == _last_json(logs / "killed" / "dialogue_val.jsonl")
    a = torch.load(logs / "full" / "checkpoints" / "every-epoch=2.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(logs / "killed" / "checkpoints" / "every-epoch=2.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] > 0 and set(a["state_dict"]) == set(b["state_dict"])
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])  # bit for bit

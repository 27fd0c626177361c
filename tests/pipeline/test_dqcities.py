"""The DQ-Cities builder end to end: a GSV-Cities-shaped folder (SynthCities renders with
GSV-Cities names and CSVs) and an OpenAI-compatible server on 127.0.0.1 that injects faults;
the result trains configs/cmpl.yaml and configs/dqpilot_sft.yaml for a few steps. Also: a build
killed mid-stage and restarted ends with exactly the expected records."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from dlgpr.cli import main
from dlgpr.data.reader import iter_records
from dlgpr.data.shards import iter_tar_members, read_manifest
from dlgpr.data.turns import read_turns
from dlgpr.dialogue.api import ChatAPIConfig
from dlgpr.pipeline.dialogues import CorpusConfig
from dlgpr.pipeline.dqcities import DialoguesConfig, DQCitiesBuildConfig, RegionsConfig, TeacherConfig, build_dqcities, format_summary
from dlgpr.pipeline.gsv import SplitConfig
from dlgpr.pipeline.grounding import GroundingConfig
from dlgpr.pipeline.store import ItemStore
from dlgpr.pipeline.text import RetryPolicy, TextExpansionConfig
from dlgpr.testing.openai_server import FakeOpenAIServer, Fault, message_text
from tests.helpers.cli_args import sft_args, tiny_args
from tests.helpers.gsv import World, fault_class

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dlgpr"])


def text_config(server: FakeOpenAIServer, max_attempts: int = 2) -> TextExpansionConfig:
    return TextExpansionConfig(api=ChatAPIConfig(base_url=server.base_url, model="fake-vlm", timeout_s=0.5, max_concurrency=3),
                               retry=RetryPolicy(max_attempts=max_attempts, backoff_s=0.01, max_backoff_s=0.02), caption_words=(1, 60))


def regions_config() -> RegionsConfig:
    return RegionsConfig(grounding=GroundingConfig(clip_pretrained=None, imgsz=320, conf=0.0), batch_images=8)


def place_records(places: Path) -> list:
    return [r for s in read_manifest(places).shards for r in iter_records(places / s.path)]


def test_build_with_faults_resumes_failed_items_and_trains_both_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    world = World(tmp_path)
    n = len(world.keys)
    n_fail = sum(fault_class(s) == 0 for s in world.by_sha)
    assert 0 < n_fail < n
    out = tmp_path / "dqcities"
    with FakeOpenAIServer(timeout_delay_s=1.0) as server:
        server.responder, server.policy = world.respond, world.policy
        kw = dict(split=world.split(), text=text_config(server), regions=regions_config(), progress=False)

        # run 1: class-0 images fail both allowed attempts and are recorded as failed
        first = build_dqcities(DQCitiesBuildConfig(str(world.gsv), str(out), stages=["text", "regions", "places"], **kw))
        text = first["stages"]["text"]
        assert (text["items"], text["done"], text["failed"]) == (n, n - n_fail, n_fail)
        assert text["failures"] == {"api_error:InternalServerError": n_fail}
        assert text["requests"] == 2 * n == len(server.requests)  # every image twice: one fault, then a success or a second fault
        assert text["prompt_tokens"] > 0 and text["completion_tokens"] > 0
        assert first["stages"]["places"]["failures"]["no_text"] == n_fail
        assert {r.key for r in place_records(out / "places")} == {world.written[p].key for p in world.written
                                                                   if fault_class(hashlib.sha256((world.gsv / "Images" / world.written[p].city / p).read_bytes()).hexdigest()) != 0}

        # run 2, same command: only the failed items are asked again, and they succeed
        before = len(server.requests)
        second = build_dqcities(DQCitiesBuildConfig(str(world.gsv), str(out), stages=["text", "regions", "places"], **kw))
        text = second["stages"]["text"]
        assert (text["resumed"], text["done"], text["failed"], text["requests"]) == (n - n_fail, n_fail, 0, n_fail)
        assert len(server.requests) - before == n_fail
        assert second["stages"]["regions"]["resumed"] == n - n_fail and second["stages"]["regions"]["done"] == n_fail
        assert "text" in format_summary(second) and "regions" in format_summary(second)

        lines = [json.loads(line) for line in (out / "work" / "text.jsonl").read_text().splitlines()]
        ok = Counter(item["key"] for item in lines if item["ok"])
        assert set(ok) == world.keys and set(ok.values()) == {1}  # every image done exactly once

        records = place_records(out / "places")
        assert len(records) == n and {r.key for r in records} == world.keys
        source = {r.key: r for r in world.written.values()}
        for r in records:
            assert r.description == source[r.key].description and r.initial_caption == source[r.key].initial_caption
            assert r.place_id % 10**5 == source[r.key].place_id % 10**5 and (r.lat, r.lon) == (source[r.key].lat, source[r.key].lon)
            assert r.split == {world.cities[0]: "train", world.cities[1]: "val", world.cities[2]: "test"}[r.city]
            for region in r.regions:  # the schema checks 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1
                assert region.phrase.lower() in r.description.lower()
        assert sum(len(r.regions) for r in records) > n  # random detector weights at conf 0: a box per phrase
        grounded = [json.loads(line) for line in (out / "work" / "regions.jsonl").read_text().splitlines()]
        assert any("with" in p for g in grounded for p in g["phrases"])  # maximal phrases with their attachments

        # the response cache: a lost work file costs no request
        (out / "work" / "text.jsonl").unlink()
        before = len(server.requests)
        third = build_dqcities(DQCitiesBuildConfig(str(world.gsv), str(out), stages=["text"], **kw))
        assert third["stages"]["text"]["cached"] == n and len(server.requests) == before

    # the place shards train the retriever config ...
    cli = main(["fit", *tiny_args(out / "places", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
                                  "--trainer.logger.init_args.version", "retriever", "--trainer.max_steps", "2")])
    assert cli.trainer.global_step == 2
    ckpt = next((tmp_path / "logs").rglob("last.ckpt"))

    # ... which the dialogue stage uses, with the API teacher and user behind a faulty server
    with FakeOpenAIServer() as server:
        calls = Counter()

        def every_fourth(body: dict) -> Fault | None:
            calls["n"] += 1
            return Fault.RATE_LIMIT if calls["n"] % 4 == 0 else None

        server.policy = every_fourth
        api = dict(base_url=server.base_url, max_retries=3, timeout_s=5.0)
        dialogues = DialoguesConfig(teacher=TeacherConfig(api=ChatAPIConfig(model="fake-teacher", **api)),
                                    user=ChatAPIConfig(model="fake-user", **api),
                                    corpus=CorpusConfig(rounds=3, prg_threshold=-1.0, chunk_places=2), tokenizer_vocab_size=400)
        config = DQCitiesBuildConfig(str(world.gsv), str(out), stages=["dialogues"], split=world.split(), retriever=str(ckpt),
                                     dialogues=dialogues, progress=False)
        built = build_dqcities(config)
        stage = built["stages"]["dialogues"]
        assert stage["items"] == 10 and stage["failed"] == 0 and stage["done"] == 30  # 5 train + 5 val places x 3 rounds
        rate_limited = len(server.requests) // 4
        assert stage["requests"] == 60 and len(server.requests) == 60 + rate_limited  # each 429 retried by the client
        teacher_prompts = [message_text(r.body["messages"][1]) for r in server.requests if "<question>" in message_text(r.body["messages"][0])]
        assert teacher_prompts and all("regions:" in p for p in teacher_prompts)  # the evidence base reaches the teacher
        before = len(server.requests)
        rerun = build_dqcities(config)
        assert len(server.requests) == before and rerun["stages"]["dialogues"]["requests"] == 0  # every chunk resumed
    manifest = json.loads((out / "dialogues" / "manifest.json").read_text())
    assert manifest["counts"]["sft"]["turns"] > 0 and manifest["counts"]["val"]["turns"] == 15
    turns = read_turns(out / "dialogues", ["sft", "grpo", "val"])
    assert {k for t in turns for k in t.candidates} <= world.keys and all(t.question.endswith("?") for t in turns)

    # ... and the corpus trains the SFT config
    corpus = {"corpus": out / "dialogues", "places": out / "places", "tokenizer": out / "dialogues" / "tokenizer"}
    cli = main(sft_args(corpus, tmp_path, "--trainer.max_steps", "2"), run=False)
    before = {k: v.detach().clone() for k, v in cli.model.state_dict().items()}
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 2
    assert any(not torch.equal(before[k], v) for k, v in cli.model.state_dict().items())


def test_a_killed_build_restarts_to_exactly_the_expected_records(tmp_path):
    world = World(tmp_path, cities=2, places=6)
    out = tmp_path / "dqcities"
    with FakeOpenAIServer(delay_s=0.1) as server:
        server.responder = world.respond
        config = {
            "gsv_root": str(world.gsv), "out_dir": str(out), "stages": ["text", "places"], "progress": False,
            "split": {"fractions": [0.5, 0.5, 0.0]},
            "text": {"api": {"base_url": server.base_url, "model": "fake-vlm", "max_concurrency": 2}, "caption_words": [1, 60]},
        }
        path = tmp_path / "build.yaml"
        path.write_text(yaml.safe_dump(config))
        cmd = [sys.executable, str(ROOT / "scripts" / "build_dqcities.py"), "--config", str(path)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        work = out / "work" / "text.jsonl"
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (not work.is_file() or len(work.read_text().splitlines()) < 6):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before_kill = {json.loads(line)["key"] for line in work.read_text().splitlines() if line.strip().endswith("}")}
        assert 6 <= len(done_before_kill) < len(world.keys)  # killed mid-stage
        assert not (out / "places" / "manifest.json").exists()

        requests_before = len(server.requests)
        rerun = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["stages"]["text"]["resumed"] == len(done_before_kill)
        assert summary["stages"]["text"]["done"] == len(world.keys) - len(done_before_kill)
        # finished work was not redone: at most the requests in flight at the kill are asked twice
        assert len(server.requests) - requests_before <= len(world.keys) - len(done_before_kill) + 2

    keys = [name[: -len(".json")] for s in read_manifest(out / "places").shards for name, _ in iter_tar_members(out / "places" / s.path)
            if name.endswith(".json")]
    assert len(keys) == len(set(keys)) == len(world.keys) and set(keys) == world.keys  # no duplicate, none missing
    ok = Counter(json.loads(line)["key"] for line in work.read_text().splitlines() if json.loads(line)["ok"])
    assert set(ok.values()) == {1}


def test_bad_input_gives_one_line_errors(tmp_path):
    script = [sys.executable, str(ROOT / "scripts" / "build_dqcities.py")]
    (tmp_path / "empty").mkdir()
    run = subprocess.run([*script, "--gsv_root", str(tmp_path / "empty"), "--out_dir", str(tmp_path / "o"), "--progress", "false"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("build_dqcities:") and "Dataframes" in last


def test_regions_stage_counts_bad_images_and_grounding_failures_and_a_rerun_retries_them(tmp_path, monkeypatch):
    from dlgpr.pipeline import dqcities
    from dlgpr.pipeline.gsv import scan_gsv_cities
    from dlgpr.pipeline.grounding import GroundedPhrase

    world = World(tmp_path, cities=1, places=2)
    images = scan_gsv_cities(world.gsv, SplitConfig()).images
    source = {r.key: r for r in world.written.values()}
    texts = {im.key: {"description": source[im.key].description} for im in images}
    truncated = images[0].path.read_bytes()
    images[0].path.write_bytes(truncated[:200])
    calls = Counter()

    class FlakyGrounder:
        """The batched call always fails; the second single-image call of the first run fails."""

        def __init__(self, config: GroundingConfig) -> None:
            pass

        def ground_many(self, images, phrases):
            raise RuntimeError("out of memory")

        def ground(self, image, phrases):
            calls["ground"] += 1
            if calls["ground"] == 2:
                raise RuntimeError("bad image for the detector")
            return [GroundedPhrase(p, (0.1, 0.2, 0.5, 0.6), 0.9) for p in phrases]

    monkeypatch.setattr(dqcities, "YOLOWorldGrounder", FlakyGrounder)
    stats = dqcities.run_regions_stage(images, texts, regions_config(), tmp_path / "out", progress=False)
    assert (stats.items, stats.done, stats.failed) == (4, 2, 2)
    assert dict(stats.failures) == {"bad_image": 1, "grounding_error": 1}
    images[0].path.write_bytes(truncated)  # the file is repaired: the rerun retries the two failures only
    again = dqcities.run_regions_stage(images, texts, regions_config(), tmp_path / "out", progress=False)
    assert (again.resumed, again.done, again.failed) == (2, 2, 0)
    done = ItemStore(tmp_path / "out" / "work" / "regions.jsonl").done()
    assert set(done) == {im.key for im in images}
    assert all(r["box"] == [0.1, 0.2, 0.5, 0.6] for d in done.values() for r in d["regions"]) and all(d["phrases"] for d in done.values())

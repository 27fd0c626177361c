import math

import pytest
import torch

from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.dialogue.loop import run_dialogue
from dlgpr.dialogue.questioners import OracleTeacherQuestioner
from dlgpr.dialogue.stopping import StoppingConfig, confidence, place_scores, stop_decisions
from tests.helpers.lexical_world import lexical_world


def test_margin_is_between_places_not_views():
    # two views of place 1 lead: the rival is place 2, 0.9 - 0.7 = 0.2
    scores = torch.tensor([[0.9, 0.85, 0.7, 0.6], [0.5, 0.45, 0.44, 0.1]])
    places = torch.tensor([[1, 1, 2, 3], [4, 5, 6, 7]])
    margin = confidence(scores, places, StoppingConfig(rule="margin", top_k=4))
    assert margin.tolist() == pytest.approx([0.2, 0.05])
    ps, n = place_scores(scores, places)
    assert n.tolist() == [3, 4] and ps[0, :3].tolist() == pytest.approx([0.9, 0.7, 0.6]) and ps[0, 3] == float("-inf")


def test_entropy_is_normalised_softmax_entropy_over_places():
    scores = torch.tensor([[0.9, 0.85, 0.7, 0.6]])
    places = torch.tensor([[1, 1, 2, 3]])
    e = [math.exp(x / 0.1) for x in (0.9, 0.7, 0.6)]
    p = [x / sum(e) for x in e]
    expected = -sum(x * math.log(x) for x in p) / math.log(3)
    got = confidence(scores, places, StoppingConfig(rule="entropy", top_k=4, temperature=0.1))
    assert float(got[0]) == pytest.approx(expected, rel=1e-6)  # float32 scores
    # equal scores: the uniform distribution, entropy 1; top_k limits what is read
    flat = confidence(torch.tensor([[0.5, 0.5, 0.5, 0.0]]), torch.tensor([[1, 2, 3, 4]]), StoppingConfig(rule="entropy", top_k=3))
    assert float(flat[0]) == pytest.approx(1.0)


def test_one_place_is_certain_and_thresholds_compare_the_right_way():
    one = (torch.tensor([[0.3, 0.2]]), torch.tensor([[7, 7]]))
    assert confidence(*one, StoppingConfig(rule="margin")).tolist() == [float("inf")]
    assert confidence(*one, StoppingConfig(rule="entropy")).tolist() == [0.0]
    scores, places = torch.tensor([[0.9, 0.7], [0.9, 0.85]]), torch.tensor([[1, 2], [1, 2]])
    stop, _ = stop_decisions(scores, places, 3, StoppingConfig(rule="margin", threshold=0.1))
    assert stop.tolist() == [True, False]
    stop, _ = stop_decisions(scores, places, 0, StoppingConfig(rule="margin", threshold=0.1, min_questions=1))
    assert stop.tolist() == [False, False]
    stop, conf = stop_decisions(scores, places, 2, StoppingConfig(rule="entropy", threshold=0.5, temperature=0.05))
    assert stop.tolist() == [True, False] and conf[0] < 0.5 < conf[1]


def test_config_is_validated():
    for bad in (dict(rule="mean"), dict(top_k=1), dict(temperature=0.0), dict(min_questions=-1), dict(threshold=float("nan"))):
        with pytest.raises(ValueError):
            StoppingConfig(**bad)


@pytest.fixture(scope="module")
def world():
    return lexical_world(places_per_city=20)


def test_run_dialogue_stops_queries_and_freezes_their_later_rounds(world):
    retriever, gallery, queries = world
    qs = queries[:16]
    fixed = run_dialogue(retriever, OracleTeacherQuestioner(), OracleAnswerer(), qs, gallery, rounds=4, top_k=10)
    never = run_dialogue(retriever, OracleTeacherQuestioner(), OracleAnswerer(), qs, gallery, rounds=4, top_k=10,
                         stopping=StoppingConfig(threshold=float("inf")))
    assert torch.equal(fixed.ranks, never.ranks) and never.questions_asked.tolist() == [4] * 16
    # a margin threshold met by some queries at some round but not by all
    finite = never.confidence[:, :4][never.confidence[:, :4].isfinite()]
    threshold = float(finite.median())
    res = run_dialogue(retriever, OracleTeacherQuestioner(), OracleAnswerer(), qs, gallery, rounds=4, top_k=10,
                       stopping=StoppingConfig(threshold=threshold))
    asked = res.questions_asked
    assert 0 < int((asked < 4).sum()) < 16
    for i in range(16):
        t = int(asked[i])
        assert len(res.turns[i]) == t
        # up to the stop it is the fixed dialogue; after it, the stopped list repeats
        assert torch.equal(res.ranks[i, : t + 1], fixed.ranks[i, : t + 1])
        assert (res.ranks[i, t:] == res.ranks[i, t]).all() and all(k == res.top_keys[i][t] for k in res.top_keys[i][t:])
        # it stopped at the first round whose confidence passed the rule
        conf = never.confidence[i, :4]
        first = next((r for r in range(4) if conf[r] >= threshold), 4)
        assert t == first
    assert res.summary()["mean_questions"] == pytest.approx(float(asked.double().mean()))
    assert res.stats["stopped_early"] == int((asked < 4).sum())


def test_a_threshold_everyone_passes_asks_nothing(world):
    retriever, gallery, queries = world
    res = run_dialogue(retriever, OracleTeacherQuestioner(), OracleAnswerer(), queries[:5], gallery, rounds=3,
                       stopping=StoppingConfig(threshold=float("-inf")))
    assert res.questions_asked.tolist() == [0] * 5 and all(not t for t in res.turns)
    assert (res.ranks == res.ranks[:, :1]).all()

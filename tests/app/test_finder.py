import json

import pytest
import torch

from dlgpr.app.finder import FinderConfig, PlaceFinder, clean_text, drive
from dlgpr.app.index import GalleryIndex
from dlgpr.data.turns import Question
from dlgpr.dialogue.answerers import DONT_KNOW, OracleAnswerer
from dlgpr.dialogue.loop import run_dialogue
from dlgpr.dialogue.questioners import OracleTeacherQuestioner, RandomQuestioner
from dlgpr.dialogue.stopping import StoppingConfig
from dlgpr.dialogue.types import compose_query
from tests.helpers.lexical_world import lexical_world, oracle_answer


@pytest.fixture(scope="module")
def world():
    return lexical_world(places_per_city=20)


def naive_rank(retriever, gallery, text, place_id):
    sim = (retriever.embed_texts([text]) @ gallery.embeddings.T)[0]
    best = sim[gallery.place_ids == place_id].max()
    higher = int((sim > best + 1e-6).sum())
    tied_others = int((((sim - best).abs() <= 1e-6) & (gallery.place_ids != place_id)).sum())
    tied_pos = int((((sim - best).abs() <= 1e-6) & (gallery.place_ids == place_id)).sum())
    return 1 + higher + tied_others / (tied_pos + 1)


def test_session_flow_ranks_asks_answers_and_confirms(world):
    retriever, gallery, queries = world
    q = queries[3]
    finder = PlaceFinder(retriever, gallery, OracleTeacherQuestioner(), FinderConfig(top_k=10, show=4))
    s = finder.start(q.initial_description, target_place_id=q.target.place_id)
    first = s.candidates()
    assert [c.rank for c in first] == [1, 2, 3, 4] and [c.score for c in first] == sorted((c.score for c in first), reverse=True)
    assert s.target_ranks == [naive_rank(retriever, gallery, q.initial_description, q.target.place_id)]

    question = s.next_question()
    assert question.text.endswith("?") and s.next_question() is question  # open until answered
    reply = oracle_answer(q, s)(question)
    s.answer(reply)
    assert [(t.question, t.answer) for t in s.history] == [(question.text, reply)]
    # the query is the dialogue loop's: description then answers
    assert s.rounds[-1].query == compose_query(q.initial_description, s.history) == f"{q.initial_description} {reply}"
    assert s.target_ranks[-1] == naive_rank(retriever, gallery, s.rounds[-1].query, q.target.place_id)

    s.next_question()
    s.dont_know()
    assert s.history[-1].answer == DONT_KNOW and not s.history[-1].failed and len(s.rounds) == 3

    chosen = s.confirm(1)
    assert chosen.key == s.candidates()[0].key and s.stopped and s.stop_reason == "confirmed"
    assert s.next_question() is None and "finished" in s.messages[-1]

    record = json.loads(s.to_json())
    assert [t["answer"] for t in record["transcript"]] == [reply, DONT_KNOW]
    assert record["target_ranks"] == s.target_ranks and len(record["rounds"]) == 3
    assert record["confirmed"]["key"] == chosen.key and record["found"] == (chosen.place_id == q.target.place_id)
    assert all({"encode_s", "search_s", "update_s"} <= set(r["timings"]) for r in record["rounds"])
    assert "question_s" in record["rounds"][0]["timings"] and len(record["rounds"][0]["candidates"]) == 4


def test_bad_input_gives_a_message_and_the_session_goes_on(world):
    retriever, gallery, queries = world
    q = queries[0]
    finder = PlaceFinder(retriever, gallery, RandomQuestioner(), FinderConfig(max_chars=40))
    s = finder.start(q.initial_description)
    assert s.target_ranks == [None]
    question = s.next_question()
    s.answer("   \n\t ")
    assert s.history == [] and s.pending is question and "empty" in s.messages[-1]
    s.answer("The door is red and " + "very " * 30 + "old.")
    assert len(s.history) == 1 and len(s.history[0].answer) <= 40 and "only the first" in s.messages[-1]
    # control characters are dropped; the text is only ever appended to the query
    text, note = clean_text("red\x00 door\x1b[31m", 100)
    assert text == "red door [31m" and note is None


class FlakyQuestioner:
    """Raises on its first call, then asks; a second failure mode returns a failed question."""

    def __init__(self):
        self.calls = 0

    def ask(self, requests):
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("endpoint down")
        if self.calls == 2:
            return [Question(text="", ok=False, error="question_format")]
        return [Question(text="What colour is the door?")]


def test_a_broken_questioner_leaves_a_failed_turn_and_a_message(world):
    retriever, gallery, queries = world
    s = PlaceFinder(retriever, gallery, FlakyQuestioner()).start(queries[0].initial_description)
    assert s.next_question() is None and "endpoint down" in s.messages[-1]
    assert s.history[-1].failed and s.history[-1].failure == "question_error"
    assert s.next_question() is None and s.history[-1].failure == "question_format"
    q = s.next_question()
    assert q.text == "What colour is the door?"
    s.answer("The door is red.")
    assert len(s.history) == 3 and s.rounds[-1].query == f"{queries[0].initial_description} The door is red."


def test_stopping_in_place_finder_agrees_with_run_dialogue(world):
    retriever, gallery, queries = world
    qs = queries[:12]
    never = run_dialogue(retriever, OracleTeacherQuestioner(), OracleAnswerer(), qs, gallery, rounds=4, top_k=10,
                         stopping=StoppingConfig(threshold=float("inf")))
    finite = never.confidence[:, :4][never.confidence[:, :4].isfinite()]
    stopping = StoppingConfig(threshold=float(finite.median()))
    loop = run_dialogue(retriever, OracleTeacherQuestioner(), OracleAnswerer(), qs, gallery, rounds=4, top_k=10, stopping=stopping)
    assert 0 < int((loop.questions_asked < 4).sum()) < len(qs)
    finder = PlaceFinder(retriever, gallery, OracleTeacherQuestioner(), FinderConfig(top_k=10, stopping=stopping, max_questions=4))
    for i, q in enumerate(qs):
        s = finder.start(q.initial_description, target_place_id=q.target.place_id)
        drive(s, oracle_answer(q, s), rounds=10)
        t = int(loop.questions_asked[i])
        assert s.questions_asked == t and s.stopped
        if t < 4:
            assert s.stop_reason == "confident"
        assert [(x.question, x.answer) for x in s.history] == [(x.question, x.answer) for x in loop.turns[i]]
        assert torch.tensor(s.target_ranks, dtype=torch.float64).equal(loop.ranks[i, : t + 1])
        assert [r.confidence for r in s.rounds[:t]] == pytest.approx(loop.confidence[i, :t].tolist())
        assert [gallery.keys[j] for j in s.rounds[-1].rows[:10]] == loop.top_keys[i][t]


def test_a_gallery_index_gives_image_locations_and_coordinates(world):
    retriever, gallery, queries = world
    n = len(gallery)
    coords = torch.stack([torch.linspace(40, 41, n, dtype=torch.float64), torch.full((n,), float("nan"), dtype=torch.float64)], dim=1)
    coords[0, 1] = 12.5
    index = GalleryIndex(gallery.embeddings, gallery.place_ids, coords, gallery.keys, gallery.descriptions, gallery.attributes,
                         [f"/imgs/{k}.jpg" for k in gallery.keys])
    s = PlaceFinder(retriever, index, RandomQuestioner(), FinderConfig(show=n, one_view_per_place=False)).start(queries[0].initial_description)
    by_key = {c.key: c for c in s.candidates()}
    assert all(c.image == f"/imgs/{c.key}.jpg" for c in by_key.values())
    assert by_key[gallery.keys[0]].coordinates == (40.0, 12.5) and by_key[gallery.keys[1]].coordinates is None


def test_a_person_sees_each_place_once_by_its_best_view(world):
    retriever, gallery, queries = world  # two views per place
    q = queries[5]
    by_image = PlaceFinder(retriever, gallery, RandomQuestioner(), FinderConfig(show=6, one_view_per_place=False)).start(q.initial_description)
    by_place = PlaceFinder(retriever, gallery, RandomQuestioner(), FinderConfig(show=6)).start(q.initial_description)
    images = by_image.candidates(n=40)
    expected, seen = [], set()
    for c in images:  # naive: the first (best) view of each place, in the image order
        if c.place_id not in seen:
            seen.add(c.place_id)
            expected.append((c.key, c.place_id, c.score))
    places = by_place.candidates()
    assert len(places) == 6 and len({c.place_id for c in places}) == 6
    assert [(c.key, c.place_id, c.score) for c in places] == expected[:6]
    assert [c.rank for c in places] == [1, 2, 3, 4, 5, 6]
    assert len({c.place_id for c in by_image.candidates()}) < 6  # image by image, views repeat places
    # what the questioner sees and the target's rank do not depend on the display
    assert by_place.rounds[-1].rows[:10] == by_image.rounds[-1].rows[:10]
    # confirming rank 3 confirms the third place shown; a key confirms its place's rank
    assert by_place.confirm(3).place_id == places[2].place_id
    other = PlaceFinder(retriever, gallery, RandomQuestioner(), FinderConfig(show=6)).start(q.initial_description)
    second_view = next(k for k, p in zip(gallery.keys, gallery.place_ids.tolist()) if p == places[1].place_id and k != places[1].key)
    assert other.confirm(second_view).rank == 2
    assert json_candidates(by_place) == [c.key for c in places]


def json_candidates(session):
    return [c["key"] for c in session.to_dict()["rounds"][-1]["candidates"]]

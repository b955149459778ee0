import pytest

from moses.metrics import edit_similarity, exact_match, first_char_accuracy, rouge_l, sari
from moses.metrics.text import normalize_code_placeholders

SOURCE = "About 95 species are currently accepted ."
REFERENCES = ["About 95 species are currently known .", "About 95 species are now accepted .",
              "95 species are now accepted ."]


def test_sari_matches_published_values():
    # the values printed in the `evaluate` library's SARI metric card (Xu et al. 2016 definition)
    assert sari([SOURCE], ["About 95 you now get in ."], [REFERENCES]) == pytest.approx(26.953601953601954, abs=1e-9)
    assert sari([SOURCE], [SOURCE], [[SOURCE]]) == pytest.approx(100.0)
    # the card's untokenised variant normalises to the same score (13a tokenizer splits the final period)
    assert sari([SOURCE.replace(" .", ".")], ["About 95 you now get in."],
                [[r.replace(" .", ".") for r in REFERENCES]]) == pytest.approx(26.953601953601954, abs=1e-9)


def test_sari_is_a_corpus_mean():
    one = sari([SOURCE], ["About 95 you now get in ."], [REFERENCES])
    both = sari([SOURCE, SOURCE], ["About 95 you now get in .", SOURCE], [REFERENCES, [SOURCE]])
    assert both == pytest.approx((one + 100.0) / 2)


def test_exact_match_strips():
    assert exact_match([" A", "B ", "c"], ["A", "B", "C"]) == pytest.approx(200 / 3)


def test_first_char_accuracy_ignores_explanations():
    assert first_char_accuracy(["B\nbecause", " A", ""], ["B\nA clause is", "C", "A"]) == pytest.approx(100 / 3)


def test_rouge_l_f_measure():
    # LCS "the cat on the mat" = 5 of 6 tokens on both sides: P = R = F = 5/6
    assert rouge_l(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(500 / 6)
    assert rouge_l(["completely different"], ["nothing shared here"]) == 0.0


def test_edit_similarity_after_placeholder_normalisation():
    assert normalize_code_placeholders("f ( <NUM_LIT> , '<STR_LIT:/>' , <STR_LIT> )") == "f ( 0 , '/' ,  )"
    assert edit_similarity(["x = <NUM_LIT>"], ["x = 0"]) == 100.0
    assert edit_similarity(["abcd"], ["abce"]) == pytest.approx(75.0)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        exact_match(["a", "b"], ["a"])

"""Corpus-level text metrics; each takes lists and returns a float from 0 to 100."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after stripping white space."""
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    return 100.0 * sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)) / len(references)


def first_char_accuracy(predictions: list[str], references: list[str]) -> float:
    """ScienceQA: the answer letter is the first non-space character; the explanation after it is ignored."""
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    hits = sum(p.strip()[:1] == r.strip()[:1] != "" for p, r in zip(predictions, references, strict=True))
    return 100.0 * hits / len(references)


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (the `rouge-score` package, its default tokenizer)."""
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references)
    if not references:
        return 0.0
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return 100.0 * sum(scores) / len(scores)


_LITERAL = re.compile(r"<(STR|NUM|CHAR)_LIT:(.*?)>", re.S)


def normalize_code_placeholders(code: str) -> str:
    """Py150's literal placeholders as TRACE scores them: <NUM_LIT> -> 0, <STR_LIT>/<CHAR_LIT> -> '',
    <STR_LIT:value> -> value."""
    code = code.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")
    return _LITERAL.sub(lambda m: m.group(2), code)


def edit_similarity(predictions: list[str], references: list[str]) -> float:
    """Mean `rapidfuzz.fuzz.ratio` (0-100) after placeholder normalisation (TRACE's Py150 score)."""
    from rapidfuzz import fuzz

    _check_lengths(predictions, references)
    if not references:
        return 0.0
    scores = [fuzz.ratio(normalize_code_placeholders(p), normalize_code_placeholders(r))
              for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores)


# ---- SARI (Xu et al. 2016), the definition of the `evaluate` library's "sari" metric ----

def _sari_tokens(sentence: str) -> list[str]:
    """Lowercase, then sacrebleu's 13a tokenizer (as `evaluate` normalises), split on spaces."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()(sentence.lower()).split(" ")


def _ngrams(tokens: list[str], n: int) -> list[str]:
    return [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision > 0 or recall > 0 else 0.0


def _sari_ngram(source: list[str], candidate: list[str], references: list[list[str]]) -> tuple[float, float, float]:
    """(keep F1, deletion precision, addition F1) for one n-gram order. Counts of source and candidate
    n-grams are multiplied by the number of references; 0/0 counts as 1 (the tensor2tensor convention)."""
    num_refs = len(references)
    ref_counts = Counter(g for ref in references for g in ref)
    src = Counter({g: c * num_refs for g, c in Counter(source).items()})
    cand = Counter({g: c * num_refs for g, c in Counter(candidate).items()})

    keep = src & cand
    keep_good = keep & ref_counts
    keep_all = src & ref_counts
    keep_precision = sum(keep_good[g] / keep[g] for g in keep_good) / len(keep) if keep else 1.0
    keep_recall = sum(keep_good.values()) / sum(keep_all.values()) if keep_all else 1.0

    deleted = src - cand
    deleted_good = deleted - ref_counts
    del_precision = sum(deleted_good[g] / deleted[g] for g in deleted_good) / len(deleted) if deleted else 1.0

    added = set(cand) - set(src)
    added_good = added & set(ref_counts)
    added_all = set(ref_counts) - set(src)
    add_precision = len(added_good) / len(added) if added else 1.0
    add_recall = len(added_good) / len(added_all) if added_all else 1.0
    return _f1(keep_precision, keep_recall), del_precision, _f1(add_precision, add_recall)


def sari_sentence(source: str, prediction: str, references: list[str]) -> float:
    """SARI of one sentence, 0-1: mean over n = 1..4 of keep F1, deletion precision and addition F1."""
    src, cand = _sari_tokens(source), _sari_tokens(prediction)
    refs = [_sari_tokens(r) for r in references]
    parts = [_sari_ngram(_ngrams(src, n), _ngrams(cand, n), [_ngrams(r, n) for r in refs]) for n in range(1, 5)]
    keep, delete, add = (sum(p[i] for p in parts) / 4 for i in range(3))
    return (keep + delete + add) / 3


def sari(sources: list[str], predictions: list[str], references: list[list[str]]) -> float:
    """Corpus SARI, 0-100: the mean sentence score (references: a list of reference lists)."""
    if not len(sources) == len(predictions) == len(references):
        raise ValueError(f"{len(sources)} sources, {len(predictions)} predictions, {len(references)} references")
    if not sources:
        return 0.0
    total = sum(sari_sentence(s, p, r) for s, p, r in zip(sources, predictions, references, strict=True))
    return 100.0 * total / len(sources)

"""Per-example scores: their mean is each task metric, so intervals can be bootstrapped from them."""

import pytest

from moses.data.stream import Task
from moses.runner.evaluate import example_scores, score_task

CASES = {
    "exact_match": (["yes", " no", "maybe"], ["yes", "yes", "maybe"]),
    "first_char_accuracy": (["A) red", "B", "c"], ["A", "C", "C"]),
    "rouge_l": (["the cat sat", "a dog", ""], ["the cat sat down", "the dog barked", "words"]),
    "edit_similarity": (["x = 1", "return y", "print(s)"], ["x = 2", "return y", "pass"]),
    "sari": (["Der Hund bellt.", "Es regnet heute stark.", "Ja"], ["Der Hund bellt laut.", "Es regnet.", "Nein"]),
}


@pytest.mark.parametrize("metric", sorted(CASES))
def test_mean_of_example_scores_is_the_task_score(metric):
    predictions, references = CASES[metric]
    prompts = [f"Paragraph:\nDer Hund bellt laut heute {i}.\n\nSimplification:" for i in range(3)]
    task = Task("t", [], [{"prompt": p, "answer": r} for p, r in zip(prompts, references, strict=True)],
                metric=metric)
    per_example = example_scores(task, predictions)
    assert len(per_example) == 3 and len(set(per_example)) > 1
    assert sum(per_example) / 3 == pytest.approx(score_task(task, predictions), abs=1e-9)

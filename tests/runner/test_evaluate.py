"""Per-example scores: their mean is each task metric, so intervals can be bootstrapped from them."""

import pytest
import torch

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


def test_answers_come_back_in_prompt_order_as_if_generated_one_at_a_time(tiny_model_dir):
    """Prompts are generated longest first (less padding per batch); each answer still belongs to its prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from moses.runner.evaluate import generate_answers

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    torch.manual_seed(0)
    for param in model.parameters():  # weights of unit scale: the greedy answer depends on the prompt
        if param.dim() > 1:
            param.data.normal_(0, 0.5)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [f"Alive check.\nItem: {' coin' * n}\nLabel:" for n in (1, 30, 4, 12, 2, 25, 7)]
    batched = generate_answers(model, tokenizer, prompts, max_new_tokens=3, batch_size=3)
    alone = [generate_answers(model, tokenizer, [p], max_new_tokens=3, batch_size=1)[0] for p in prompts]
    assert batched == alone and len(set(alone)) > 1
    assert generate_answers(model, tokenizer, [], max_new_tokens=3) == []

"""Batched greedy generation (left padding, KV cache) and scoring of a task's test examples."""

from __future__ import annotations

from dataclasses import replace

import torch
from tqdm.auto import tqdm

from moses import faults
from moses.data.collate import answer_token_budget, generation_batches, longest_first
from moses.data.stream import Task
from moses.data.trace import sari_source
from moses.metrics import text
from moses.precision import autocast, frozen_weights_cast


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
                     max_prompt_tokens: int = 320, description: str = "generate",
                     precision: str = "fp32") -> list[str]:
    """Greedy answers in prompt order, generated under `precision` (fp32 or bf16 autocast). Under several
    processes (accelerate) each generates every n-th prompt and all of them get the whole list back."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    mine = prompts[state.process_index::state.num_processes]
    order = longest_first(tokenizer, mine, max_prompt_tokens)  # the answers go back to prompt order below
    device = next(model.parameters()).device
    answers: list[str] = []
    batches = generation_batches(tokenizer, [mine[i] for i in order], batch_size, max_prompt_tokens, device)
    with frozen_weights_cast(model, precision):
        for batch in tqdm(batches, total=-(-len(mine) // batch_size), desc=description, leave=False,
                          disable=not state.is_local_main_process):
            with autocast(precision, device.type):
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                     pad_token_id=tokenizer.pad_token_id)
            answers += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            faults.reached("eval-batch")
    answers = [answer for _, answer in sorted(zip(order, answers, strict=True))]
    if state.num_processes == 1:
        return answers
    indexed = gather_object([(state.process_index + i * state.num_processes, a) for i, a in enumerate(answers)])
    return [answer for _, answer in sorted(indexed)]


def score_task(task: Task, predictions: list[str]) -> float:
    """The task's metric over its test examples, 0-100."""
    references = [e["answer"] for e in task.test]
    if task.metric == "sari":
        return text.sari([sari_source(e["prompt"]) for e in task.test], predictions, [[r] for r in references])
    return getattr(text, task.metric)(predictions, references)


def example_scores(task: Task, predictions: list[str]) -> list[float]:
    """Each test example's score, 0-100. Every task metric is the mean of these, which is what lets
    `moses compare` bootstrap intervals from the saved predictions."""
    return [score_task(replace(task, test=[example]), [prediction])
            for example, prediction in zip(task.test, predictions, strict=True)]


def evaluate_task(model, tokenizer, task: Task, batch_size: int = 16, max_prompt_tokens: int = 320,
                  precision: str = "fp32") -> tuple[float, list[dict]]:
    """(score, one record per test example)."""
    predictions = generate_answers(model, tokenizer, [e["prompt"] for e in task.test],
                                   answer_token_budget(tokenizer, task),
                                   batch_size, max_prompt_tokens, description=f"eval {task.name}",
                                   precision=precision)
    records = [{"task": task.name, "prediction": p, "reference": e["answer"], "score": score}
               for p, e, score in zip(predictions, task.test, example_scores(task, predictions), strict=True)]
    return score_task(task, predictions), records

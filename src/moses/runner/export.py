"""A run's final MoSEs state as something to use: `resolve_adapter` (the adapter folder and base model behind a
run directory or an adapter directory; `moses export`, `moses serve`) and `export_task` (one task as a peft
LoRA: exact where it is one; with `approximate`, the task's mean routing over its training prompts folded in
where the router mixes per token, and the approximation's agreement with MoSEs measured on the task's eval
examples and written beside it, `approximation.json`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moses.errors import CheckpointError, ConfigError
from moses.io import read_json


def resolve_adapter(source: Path, model_name: str | None = None) -> tuple[Path, str]:
    """(adapter directory, base model) of `source`: a run directory (its last checkpoint, verified; the run's
    model) or a MoSEs adapter directory (`model_name`, else the adapter's base_model_name_or_path)."""
    from moses.runner.checkpoints import final_checkpoint
    from moses.runner.run import CONFIG_FILE, build_stream, read_config, read_results

    if (source / CONFIG_FILE).is_file():
        config = read_config(source)
        if config.method != "moses":
            raise ConfigError(f"{source}: a {config.method} run; this needs a MoSEs run")
        results = read_results(source)
        adapter = final_checkpoint(source, build_stream(config), results["completed"] if results else 0)
        return adapter, model_name or config.model
    if (source / "adapter_config.json").is_file():
        saved = read_json(source / "adapter_config.json", CheckpointError)
        model_name = model_name or (saved.get("base_model_name_or_path") if isinstance(saved, dict) else None)
        if not model_name:
            raise ConfigError(f"{source}: the adapter does not name its base model; pass --model")
        return source, model_name
    raise ConfigError(f"{source}: neither a run directory (config.json) nor a MoSEs adapter (adapter_config.json)")


APPROXIMATION_FILE = "approximation.json"


def export_task(source: Path, task: str, output: Path, model_name: str | None = None, approximate: bool = False,
                max_prompts: int = 256) -> tuple[Path, dict[str, Any] | None]:
    """Task `task` of `source` (see `resolve_adapter`) as a peft LoRA adapter in `output`, and with
    `approximate` the agreement report (`approximation_report`), else None. `approximate` needs a run
    directory: the task's training prompts (at most `max_prompts`) give its mean routing."""
    from moses.adapter import MoSEsModel
    from moses.data.collate import generation_batch
    from moses.models import load_model
    from moses.runner.run import CONFIG_FILE, build_stream, check_output, read_config

    check_output(output)
    adapter, model_name = resolve_adapter(source, model_name)
    base, tokenizer = load_model(model_name)
    model = MoSEsModel.from_pretrained(base, adapter)
    if not approximate:
        return model.export_task_lora(task, output), None
    if not (source / CONFIG_FILE).is_file():
        raise ConfigError(f"{source}: --approximate needs a run directory, whose training prompts give the task's "
                          "mean routing; an adapter directory has none")
    config = read_config(source)
    by_name = {t.name: t for t in build_stream(config)}
    model.task_index(task)  # an unknown task: the adapter's own error
    if task not in by_name:
        raise ConfigError(f"{source}: task {task!r} is in the adapter but not in the run's stream")
    stream_task = by_name[task]
    prompts = [generation_batch(tokenizer, [e["prompt"]], config.max_prompt_tokens)["input_ids"][0]
               for e in stream_task.train[:max_prompts]]
    mean_gates = model.mean_task_gates(task, prompts)
    out = model.export_task_lora(task, output, mean_gates=mean_gates)
    report = approximation_report(model, task, out, model_name, tokenizer, stream_task, config.max_prompt_tokens)
    report["training_prompts"] = len(prompts)
    (out / APPROXIMATION_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return out, report


def approximation_report(model, task: str, lora_dir: Path, model_name: str, tokenizer, stream_task,
                         max_prompt_tokens: int, batch_size: int = 16) -> dict[str, Any]:
    """How close the exported LoRA (loaded by peft on a fresh base) is to MoSEs' task `task`, on the task's eval
    examples (its test examples when it has none): the share of greedy answers that are identical, and the mean
    and largest absolute gap between their next-token logits over the prompts' tokens, in fp32."""
    import torch
    from peft import PeftModel

    from moses.data.collate import answer_token_budget, generation_batches
    from moses.models import load_model
    from moses.runner.evaluate import generate_answers

    split = "eval" if stream_task.eval else "test"
    examples = stream_task.eval or stream_task.test
    prompts = [e["prompt"] for e in examples]
    lora = PeftModel.from_pretrained(load_model(model_name)[0], str(lora_dir)).eval()
    lora.to(next(model.parameters()).device)
    model.set_task(task)
    model.eval()
    budget = answer_token_budget(tokenizer, stream_task)
    answers = {name: generate_answers(m, tokenizer, prompts, budget, batch_size,
                                      max_prompt_tokens, description=f"{name} answers")
               for name, m in (("moses", model), ("lora", lora))}
    gap_sum, gap_max, count = 0.0, 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in generation_batches(tokenizer, prompts, batch_size, max_prompt_tokens, device):
            gap = (model(**batch).logits - lora(**batch).logits).abs()
            real = batch["attention_mask"].bool()
            gap_sum += float(gap[real].sum())
            gap_max = max(gap_max, float(gap[real].max()))
            count += int(real.sum()) * gap.shape[-1]
    same = sum(a == b for a, b in zip(answers["moses"], answers["lora"], strict=True))
    return {"task": task, "split": split, "examples": len(prompts), "greedy_agreement": same / len(prompts),
            "mean_abs_logit_gap": gap_sum / count, "max_abs_logit_gap": gap_max}

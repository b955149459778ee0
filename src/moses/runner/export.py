"""A run's final MoSEs state as something to use: `resolve_adapter` (the adapter folder and base model behind a
run directory or an adapter directory; `moses export`, `moses serve`) and `export_task` (one task as a peft
LoRA)."""

from __future__ import annotations

from pathlib import Path

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


def export_task(source: Path, task: str, output: Path, model_name: str | None = None) -> Path:
    """Task `task` of `source` (see `resolve_adapter`) as a peft LoRA adapter in `output`."""
    from moses.adapter import MoSEsModel
    from moses.models import load_model
    from moses.runner.run import check_output

    check_output(output)
    adapter, model_name = resolve_adapter(source, model_name)
    base, _ = load_model(model_name)
    return MoSEsModel.from_pretrained(base, adapter).export_task_lora(task, output)

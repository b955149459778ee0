"""`moses export`: one task of a run's final MoSEs state (or of a saved adapter) as a standard peft LoRA."""

from __future__ import annotations

from pathlib import Path

from moses.errors import CheckpointError, ConfigError
from moses.io import read_json


def export_task(source: Path, task: str, output: Path, model_name: str | None = None) -> Path:
    """`source`: a run directory (its last checkpoint, verified; the run's model) or a MoSEs adapter
    directory (its base model from `model_name` or the adapter's base_model_name_or_path)."""
    from moses.adapter import MoSEsModel
    from moses.models import load_model
    from moses.runner.checkpoints import UNVERIFIED, checkpoint_dir, verify_checkpoint
    from moses.runner.config import RunConfig
    from moses.runner.run import CONFIG_FILE, build_stream, check_output, read_results

    check_output(output)
    if (source / CONFIG_FILE).is_file():
        config = RunConfig.from_dict(read_json(source / CONFIG_FILE, CheckpointError), str(source / CONFIG_FILE))
        if config.method != "moses":
            raise ConfigError(f"{source}: a {config.method} run; only MoSEs runs export tasks as LoRA adapters")
        results = read_results(source)
        completed = results["completed"] if results else 0
        if not completed:
            raise CheckpointError(f"{source}: no task has finished training yet")
        stream = build_stream(config)
        adapter = checkpoint_dir(source, completed - 1, stream[completed - 1])
        problem = verify_checkpoint(adapter)
        if problem not in (None, UNVERIFIED):
            raise CheckpointError(f"{adapter}: not usable ({problem})")
        model_name = model_name or config.model
    elif (source / "adapter_config.json").is_file():
        adapter = source
        saved = read_json(source / "adapter_config.json", CheckpointError)
        model_name = model_name or (saved.get("base_model_name_or_path") if isinstance(saved, dict) else None)
        if not model_name:
            raise ConfigError(f"{source}: the adapter does not name its base model; pass --model")
    else:
        raise ConfigError(f"{source}: neither a run directory (config.json) nor a MoSEs adapter (adapter_config.json)")
    base, _ = load_model(model_name)
    model = MoSEsModel.from_pretrained(base, adapter)
    return model.export_task_lora(task, output)

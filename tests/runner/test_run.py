"""End to end on a tiny random Llama saved as a local HF directory: run directory, TIL invariance, resume."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from moses.errors import CheckpointError, ConfigError
from moses.runner import run as run_module
from moses.runner.config import RunConfig
from moses.runner.predictions import PREDICTIONS_FILE, read_predictions
from moses.runner.run import evaluate_run, run

from conftest import run_interrupted_in_second_task, tiny_config

EPOCHS = 8  # the default MoSEs (one rank-2 subexpert per task) needs 16 steps to learn the tiny model's answer format


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def answers(records):
    """The records without their stage: what two evaluations of the same model agree on."""
    return [{k: v for k, v in r.items() if k != "stage"} for r in records]


@pytest.fixture(scope="module")
def moses_run(tiny_model_dir, tmp_path_factory):
    config = tiny_config(tiny_model_dir, tmp_path_factory.mktemp("run") / "moses", epochs=EPOCHS)
    return config, run(config, echo=lambda *_: None)


def test_run_directory_layout(moses_run):
    config, results = moses_run
    output = Path(config.output)
    assert {p.name for p in output.iterdir()} >= {"config.json", "results.json", "train_log.jsonl",
                                                  "predictions.jsonl", "checkpoints"}
    assert not (output / "predictions").exists()  # one file of answers per run, not one per stage and task
    saved = read_predictions(output, ["zero-shot", "after-00", "after-01"])  # (moses eval may add eval-til)
    stages = {stage: list(tasks) for stage, tasks in saved.items()}
    assert stages == {"zero-shot": ["alive", "size"], "after-00": ["alive"], "after-01": ["alive", "size"]}
    records = read_jsonl(output / PREDICTIONS_FILE)
    assert [r["index"] for r in records if r["stage"] == "after-01" and r["task"] == "size"] == list(range(8))
    assert all(list(r) == ["stage", "task", "index", "prediction", "reference", "score"] for r in records)
    assert RunConfig(**json.loads((output / "config.json").read_text())) == config
    saved = json.loads((output / "results.json").read_text())
    assert saved["completed"] == 2 and saved["tasks"] == ["alive", "size"]
    assert len(saved["R"]) == 2 and saved["R"][0][1] is None  # future tasks not evaluated by default
    log = read_jsonl(output / "train_log.jsonl")
    assert [r["task"] for r in log] == ["alive"] * 2 * EPOCHS + ["size"] * 2 * EPOCHS
    assert all(r["loss"] > 0 for r in log)
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["00-alive", "01-size"]  # the two newest
    assert saved["capacity"]["num_tasks"] == 2 and saved["metrics"]["OP"] is not None
    assert saved["split"] == "test"
    phases = saved["task_seconds"]  # where each task's time went; the first three make up train_seconds
    assert [list(p) for p in phases] == [["task_start", "training", "task_end", "checkpoint", "evaluation"]] * 2
    for phase, total in zip(phases, saved["train_seconds"], strict=True):
        assert min(phase.values()) >= 0 and phase["training"] > 0
        assert phase["task_start"] + phase["training"] + phase["task_end"] == pytest.approx(total, rel=1e-6)


def test_moses_keeps_earlier_tasks_exactly(moses_run):
    config, results = moses_run
    R = results["R"]
    assert R[0][0] > results["zero_shot"][0]  # the task was learned (the answer format at least)
    assert R[1][0] == R[0][0] and results["metrics"]["BWT"] == 0.0
    predictions = read_predictions(config.output)
    assert answers(predictions["after-00"]["alive"]) == answers(predictions["after-01"]["alive"])


def test_interrupted_run_resumes_to_the_same_result(moses_run, tiny_model_dir, tmp_path, monkeypatch):
    _, uninterrupted = moses_run
    config = tiny_config(tiny_model_dir, tmp_path / "resumed", epochs=EPOCHS)
    run_interrupted_in_second_task(config, monkeypatch)
    assert json.loads((tmp_path / "resumed" / "results.json").read_text())["completed"] == 1
    with open(tmp_path / "resumed" / PREDICTIONS_FILE, "a") as handle:  # what a write cut short would leave
        handle.write('{"stage": "after-01", "task": "alive", "index": 0, "predic')
    assert list(read_predictions(tmp_path / "resumed")) == ["zero-shot", "after-00"]  # the torn line is ignored
    with pytest.raises(ConfigError, match="--resume"):
        run(config, echo=lambda *_: None)
    with pytest.raises(CheckpointError, match="other settings \\(epochs\\)"):
        run(replace(config, epochs=2), resume=True, echo=lambda *_: None)
    with pytest.raises(CheckpointError, match="other settings \\(options_by_method\\)"):
        run(replace(config, options_by_method={"moses": {"top_k": 1}}), resume=True, echo=lambda *_: None)
    # another method's options (a compare's config that gained seq-lora's swept lr) do not touch this run
    config = replace(config, options_by_method={"seq-lora": {"lr": 1e-3, "r": 4}, "moses": {"lr": config.lr}})
    resumed = run(config, resume=True, echo=lambda *_: None)
    assert resumed["R"] == uninterrupted["R"]
    assert [r["loss"] for r in resumed["train_log"]] == [r["loss"] for r in uninterrupted["train_log"]]
    # the resumed run's answers are the uninterrupted run's, whole lines only (the torn one is gone)
    reference = (Path(moses_run[0].output) / PREDICTIONS_FILE).read_text().splitlines(keepends=True)
    assert (tmp_path / "resumed" / PREDICTIONS_FILE).read_text() == "".join(
        line for line in reference if '"stage": "eval-' not in line)  # moses eval may have added its stage there


def test_evaluate_run_til_reproduces_the_last_row(moses_run):
    config, results = moses_run
    scores = evaluate_run(Path(config.output), mode="til")
    assert list(scores["scores"].values()) == results["R"][-1]
    assert (Path(config.output) / "eval-til.json").is_file()
    saved = read_predictions(config.output, ["eval-til", "after-01"])
    assert {task: answers(records) for task, records in saved["eval-til"].items()} == {
        task: answers(records) for task, records in saved["after-01"].items()}
    with pytest.raises(ConfigError, match="not trained in this run"):
        evaluate_run(Path(config.output), tasks=["nope"])


def test_seq_lora_runs_in_the_same_loop(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path / "seq", method="seq-lora", method_options={"r": 4})
    results = run(config, echo=lambda *_: None)
    assert results["completed"] == 2 and results["capacity"]["stored_bytes"] > 0
    assert (tmp_path / "seq" / "checkpoints" / "01-size" / "t0" / "adapter_model.safetensors").is_file()


def test_unknown_method_and_options_are_config_errors(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        run(tiny_config(tiny_model_dir, tmp_path, method="nope"), echo=lambda *_: None)
    with pytest.raises(ConfigError, match="unknown MoSEsConfig field"):
        run(tiny_config(tiny_model_dir, tmp_path, method_options={"experts": 3}), echo=lambda *_: None)


def test_tail_evaluation_infers_task_ids(moses_run):
    config, _ = moses_run
    summary = evaluate_run(Path(config.output), mode="tail")
    assert summary["task_id_accuracy"] >= 95.0, summary["task_id_confusion"]
    assert set(summary["task_id_confusion"]) == {"alive", "size"}
    assert sum(summary["task_id_confusion"]["alive"].values()) == config.n_test


def test_learned_keys_infer_the_embedded_tasks(moses_run):
    from moses.data.demo import demo_stream
    from moses.methods import make_method
    from moses.models import load_model

    config, _ = moses_run
    method = make_method("moses", {"tail": "keys"})
    method.load(*load_model(config.model), Path(config.output) / "checkpoints" / "01-size")
    for task in demo_stream(n_train=8, n_test=8):
        inferred = method.infer_task_names([e["prompt"] for e in task.test])
        assert inferred.count(task.name) >= 0.95 * len(inferred), inferred
    # batched longest first, the names still come back in prompt order: mixed lengths, interleaved tasks
    prompts = [e["prompt"] + " item" * (i % 5) for i, pair in enumerate(zip(*(t.test for t in demo_stream(
        n_train=8, n_test=8)), strict=True)) for e in pair]
    one_by_one = [method.infer_task_names([p])[0] for p in prompts]
    assert method.infer_task_names(prompts) == one_by_one and len(set(one_by_one)) == 2


def test_options_by_method_reach_each_method_of_a_comparison(tmp_path):
    config = RunConfig(method="moses", method_options={"top_k": 1},
                       options_by_method={"moses": {"lr": 0.01, "top_k": 3}, "replay": {"per_task": 4}})
    assert config.options() == {"lr": 0.01, "top_k": 1}  # the run's own method_options win
    replay = config.for_method("replay", str(tmp_path / "replay"))
    assert replay.options() == {"per_task": 4} and replay.output == str(tmp_path / "replay")
    assert config.for_method("seq-lora", "x").options() == {}
    with pytest.raises(ConfigError, match="options_by_method.*unknown method.*lorra"):
        RunConfig(options_by_method={"lorra": {}})
    with pytest.raises(ConfigError, match="options_by_method"):
        RunConfig(options_by_method={"moses": 0.01})


def test_diagonal_rows_evaluate_the_new_task_then_all_at_the_end(tiny_model_dir, tmp_path):
    from moses.data.demo import demo_stream

    tasks = []
    for name, task in zip(("a", "b", "c"), demo_stream() + demo_stream()[:1], strict=False):
        for split in ("train", "test"):
            (tmp_path / f"{name}_{split}.json").write_text(json.dumps(getattr(task, split)[:8]))
        tasks.append({"name": name, "train": f"{name}_train.json", "test": f"{name}_test.json"})
    (tmp_path / "stream.json").write_text(json.dumps({"tasks": tasks}))
    config = tiny_config(tiny_model_dir, tmp_path / "run", stream="manifest", manifest=str(tmp_path / "stream.json"),
                         eval_rows="diagonal", epochs=1)
    results = run(config, echo=lambda *_: None)
    assert [[score is not None for score in row] for row in results["R"]] == [
        [True, False, False], [False, True, False], [True, True, True]]
    assert results["metrics"]["BWT"] == 0.0 and results["metrics"]["AAT"] is None
    saved = read_predictions(tmp_path / "run", ["after-00", "after-01", "after-02"])
    assert {stage: list(tasks) for stage, tasks in saved.items()} == {
        "after-00": ["a"], "after-01": ["b"], "after-02": ["a", "b", "c"]}
    with pytest.raises(ConfigError, match="eval_rows"):
        RunConfig(eval_rows="diagonal", fwt=True)


def test_demo_runs_moses_at_its_own_lr_beside_seq_lora(tiny_model_dir, tmp_path):
    from moses.report.demo import run_demo

    printed = []
    config = tiny_config(tiny_model_dir, tmp_path, epochs=1, lr=0.001)
    results = run_demo(config, echo=printed.append)
    assert set(results) == {"moses", "seq-lora"} and all(r["completed"] == 2 for r in results.values())
    lrs = {m: {row["lr"] for row in read_jsonl(tmp_path / m / "train_log.jsonl")} for m in results}
    assert lrs == {"moses": {0.005}, "seq-lora": {0.001}}
    assert sum("OP" in line for line in printed) == 2


def test_bf16_run_uses_autocast_and_keeps_old_tasks(moses_run, tiny_model_dir, tmp_path, monkeypatch):
    _, fp32 = moses_run
    config = tiny_config(tiny_model_dir, tmp_path / "bf16", precision="bf16")
    real_train, autocast_seen = run_module.train_task, {}

    def recording_train(model, *args, **kwargs):  # is every task's training forward under autocast?
        task = kwargs["description"]
        hook = model.get_input_embeddings().register_forward_hook(
            lambda *_: autocast_seen.setdefault(task, set()).add(torch.is_autocast_enabled("cpu")))
        try:
            return real_train(model, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(run_module, "train_task", recording_train)
    results = run(config, echo=lambda *_: None)
    monkeypatch.undo()
    assert len(autocast_seen) == 2 and all(seen == {True} for seen in autocast_seen.values()), autocast_seen
    assert results["precision"] == "bf16" and fp32["precision"] in ("fp32", "bf16")
    assert results["machine"]["torch_threads"] == torch.get_num_threads()  # where its timings were measured
    reference = run(replace(config, precision="fp32", output=str(tmp_path / "fp32")), echo=lambda *_: None)
    for task in ("alive", "size"):  # every task's forward ran in bf16 (not just the first one's)
        losses = [r["loss"] for r in results["train_log"] if r["task"] == task]
        expected = [r["loss"] for r in reference["train_log"] if r["task"] == task]
        assert losses[0] != expected[0] and losses == pytest.approx(expected, rel=0.1)
    assert results["R"][1][0] == results["R"][0][0] and results["metrics"]["BWT"] == 0.0
    predictions = read_predictions(config.output)
    assert answers(predictions["after-00"]["alive"]) == answers(predictions["after-01"]["alive"])


def test_variants_run_their_method_with_their_own_options(tmp_path):
    config = RunConfig(options_by_method={"moses": {"lr": 0.01, "top_k": 3}},
                       variants={"moses-sub": {"method": "moses", "router_input": "subexperts"}})
    variant = config.for_method("moses-sub", str(tmp_path / "v"))
    assert variant.method == "moses" and variant.options() == {"lr": 0.01, "top_k": 3, "router_input": "subexperts"}
    assert variant.variants == {} and config.for_method("seq-lora", "x").variants == {}  # runs need none
    with pytest.raises(ConfigError, match="variants.bad: needs 'method'"):
        RunConfig(variants={"bad": {"lr": 0.1}})
    with pytest.raises(ConfigError, match="variants.moses: a variant cannot take the name of a method"):
        RunConfig(variants={"moses": {"method": "moses"}})


def test_moses_own_init_best_chooses_a_start_per_task_in_a_run(tiny_model_dir, tmp_path):
    options = {"ownership": "subexperts", "new_subexperts": 1, "rank": 2, "router_input": "subexperts",
               "own_init": "best"}
    results = run(tiny_config(tiny_model_dir, tmp_path / "best", epochs=2, method_options=options),
                  echo=lambda *_: None)
    tasks = results["capacity"]["tasks"]
    assert tasks[0]["own_init_from"] is None and tasks[1]["own_init_from"] in (None, "alive")
    assert results["metrics"]["BWT"] == 0.0
    saved = json.loads((tmp_path / "best" / "checkpoints" / "01-size" / "moses_tasks.json").read_text())
    assert saved["own_init_sources"] == [None, None if tasks[1]["own_init_from"] is None else 0]

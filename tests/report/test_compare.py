"""`moses compare`: several methods into one table, JSON and bar chart; finished runs are reused."""

import json

import pytest

from moses.cli import main
from moses.runner.predictions import read_predictions


def test_compare_writes_table_json_and_png(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "cmp"
    args = ["compare", "--methods", "zero-shot,lora-per-task", "--model", tiny_model_dir, "--n-train", "8",
            "--n-test", "8", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--output", str(output)]
    assert main(args) == 0
    rows = json.loads((output / "compare.json").read_text())
    assert [r["method"] for r in rows] == ["zero-shot", "lora-per-task"]
    assert rows[0]["trainable_parameters"] == 0 and rows[0]["stored_bytes"] == 0 and rows[0]["lr"] is None
    assert rows[1]["BWT"] == 0.0 and rows[1]["stored_bytes"] > 0
    assert (output / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (output / "compare.png").stat().st_size > 5000
    table = (output / "compare.md").read_text()
    assert "| lora-per-task |" in table
    final = json.loads((output / "lora-per-task" / "results.json").read_text())["R"][-1]
    assert rows[1]["final_scores"] == final and rows[1]["tasks"] == ["alive", "size"]
    assert "| final score | alive | size |" in table
    assert f"| lora-per-task | {final[0]:.1f} | {final[1]:.1f} |" in table
    capsys.readouterr()
    assert main(args) == 0  # the second time both runs are reused, not retrained
    assert capsys.readouterr().out.count("finished earlier") == 2


def test_compare_variants_intervals_and_one_zero_shot_row(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "cmp"
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {tiny_model_dir}\nn_train: 8\nn_test: 8\nepochs: 1\nbatch_size: 4\ndevice: cpu\n"
                      f"precision: fp32\noutput: {output}\n"
                      "variants: {lpt-fast: {method: lora-per-task, lr: 0.05}}\n")
    args = ["compare", "--config", str(config), "--methods", "lora-per-task,lpt-fast,seq-lora",
            "--reference", "lora-per-task"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("zero-shot row reused") == 2  # evaluated once, by the first run
    assert "run 1 of 3: lora-per-task" in out and "run 3 of 3: seq-lora (" in out  # where a long sweep is
    rows = {r["method"]: r for r in json.loads((output / "compare.json").read_text())}
    assert json.loads((output / "lpt-fast" / "config.json").read_text())["method_options"] == {"lr": 0.05}
    for name, row in rows.items():
        low, high = row["OP_ci"]
        assert low <= row["OP"] <= high and row["reference"] == "lora-per-task"
        if name == "lora-per-task":
            assert row["OP_minus_reference_ci"] is None
        else:
            low, high = row["OP_minus_reference_ci"]
            assert low <= row["OP_minus_reference"] <= high
            assert row["OP_minus_reference"] == pytest.approx(row["OP"] - rows["lora-per-task"]["OP"])
            assert row["detectable_difference"] == pytest.approx(2.8016 * row["OP_minus_reference_se"], rel=1e-3)
    table = (output / "compare.md").read_text()
    assert "| OP 95% CI | vs lora-per-task (95% CI) |" in table and "| lpt-fast |" in table
    assert "| precision |" in table and all(r["precision"] == "fp32" for r in rows.values())
    # each row says the lr it trained with: the config's for plain methods, the variant's own for a variant
    assert rows["lpt-fast"]["lr"] == 0.05 and rows["seq-lora"]["lr"] == rows["lora-per-task"]["lr"] == 3e-3
    assert "| lpt-fast | 0.05 |" in table and "| seq-lora | 0.003 |" in table
    assert table.count("| fp32 |") == 3  # each row says its precision: a comparison may mix runs of both
    total = sum(r["total_seconds"] for r in rows.values())
    assert "detect with 80% power" in table and f"lpt-fast {rows['lpt-fast']['detectable_difference']:.1f}" in table
    assert total > 0 and f"Time: 3 runs, {total:,.0f} s" in table and f"(fp32 {total:,.0f} s)" in table
    zero = json.loads((output / "seq-lora" / "results.json").read_text())["zero_shot"]
    assert zero == json.loads((output / "lora-per-task" / "results.json").read_text())["zero_shot"]
    assert read_predictions(output / "seq-lora", ["zero-shot"]) == read_predictions(output / "lora-per-task",
                                                                                    ["zero-shot"])  # copied


def test_a_row_of_a_method_that_is_not_continual_has_no_bwt_even_from_an_older_run():
    from moses.report.compare import comparison_row

    saved = {"method": "multitask", "metrics": {"OP": 35.5, "BWT": 27.8, "forgetting": -27.8}}  # before the flag
    row = comparison_row("multitask", saved)
    assert row["OP"] == 35.5 and row["BWT"] is None and row["forgetting"] is None
    assert saved["metrics"]["BWT"] == 27.8  # the run's own results are left as saved
    sequential = comparison_row("seq-lora", {"method": "seq-lora", "metrics": {"OP": 26.4, "BWT": -8.5}})
    assert sequential["BWT"] == -8.5


def test_compare_jobs_runs_methods_side_by_side_with_the_results_of_one_at_a_time(tiny_model_dir, tmp_path,
                                                                                   capfd):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers get 1 thread each too, so both ways compute the same numbers
    try:
        common = ["compare", "--methods", "lora-per-task,seq-lora,zero-shot,moses", "--model", tiny_model_dir,
                  "--n-train", "8", "--n-test", "8", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
                  "--precision", "fp32"]
        assert main([*common, "--output", str(tmp_path / "one")]) == 0
        capfd.readouterr()
        assert main([*common, "--output", str(tmp_path / "two"), "--jobs", "2"]) == 0
        out = capfd.readouterr().out
    finally:
        torch.set_num_threads(threads)
    # zero-shot goes first, alone (it only evaluates the row the others share), then 2 at a time (capfd: the
    # workers print to the file descriptor, not to sys.stdout)
    assert "running 3 method(s) 2 at a time, 1 torch thread(s) each" in out
    assert out.count("zero-shot row reused") == 3
    one = json.loads((tmp_path / "one" / "compare.json").read_text())
    two = json.loads((tmp_path / "two" / "compare.json").read_text())
    assert [r["method"] for r in two] == ["lora-per-task", "seq-lora", "zero-shot", "moses"]
    for a, b in zip(one, two, strict=True):
        assert a["final_scores"] == b["final_scores"] and a["OP"] == b["OP"] and a["OP_ci"] == b["OP_ci"]
    trained = ("lora-per-task", "seq-lora", "moses")
    results = [json.loads((tmp_path / "two" / m / "results.json").read_text()) for m in trained]
    first = json.loads((tmp_path / "two" / "zero-shot" / "results.json").read_text())
    assert all(r["zero_shot"] == first["zero_shot"] for r in results)  # evaluated once, by the zero-shot run
    shared = read_predictions(tmp_path / "two" / "zero-shot", ["zero-shot"])
    assert all(read_predictions(tmp_path / "two" / m, ["zero-shot"]) == shared for m in trained)
    capfd.readouterr()
    assert main([*common, "--output", str(tmp_path / "two"), "--jobs", "2"]) == 0  # finished runs are reused
    assert capfd.readouterr().out.count("finished earlier") == 4


def test_compare_jobs_must_be_at_least_one(tiny_model_dir, tmp_path, capsys):
    args = ["compare", "--methods", "lora-per-task", "--model", tiny_model_dir, "--output", str(tmp_path / "c"),
            "--jobs", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--jobs 0: must be a whole number of at least 1" in err
    assert not (tmp_path / "c").exists()


def demo_manifest(root) -> str:
    """The demo stream as a manifest whose eval split is the test split of another seed's draw (12 examples
    against the test split's 8)."""
    from moses.data.demo import demo_stream

    tasks = []
    for task, other in zip(demo_stream(n_train=8, n_test=8), demo_stream(n_train=8, n_test=12, seed=1), strict=True):
        for split, examples in (("train", task.train), ("test", task.test), ("eval", other.test)):
            (root / f"{task.name}-{split}.json").write_text(json.dumps(examples))
        tasks.append({"name": task.name, **{s: f"{task.name}-{s}.json" for s in ("train", "test", "eval")},
                      "max_new_tokens": "auto"})
    (root / "stream.json").write_text(json.dumps({"tasks": tasks}))
    return str(root / "stream.json")


def test_compare_lr_grid_on_the_eval_split(tiny_model_dir, tmp_path, capsys):
    """--lr-grid sweeps every method at each lr as `<method>-lr<lr>` variants; --split eval scores the eval
    examples, says so in every row, and a later test-split comparison cannot reuse those runs."""
    output = tmp_path / "sweep"
    args = ["compare", "--methods", "zero-shot,lora-per-task", "--lr-grid", "0.01,0.05", "--model", tiny_model_dir,
            "--manifest", demo_manifest(tmp_path), "--epochs", "1", "--batch-size", "4", "--device", "cpu",
            "--precision", "fp32", "--output", str(output), "--split", "eval"]
    assert main(args) == 0
    rows = json.loads((output / "compare.json").read_text())
    assert [(r["method"], r["lr"]) for r in rows] == [("zero-shot", None), ("lora-per-task-lr1e-2", 0.01),
                                                     ("lora-per-task-lr5e-2", 0.05)]
    assert {r["split"] for r in rows} == {"eval"} and "| eval |" in (output / "compare.md").read_text()
    answers = [e["answer"] for e in json.loads((tmp_path / "alive-eval.json").read_text())]
    scored = read_predictions(output / "lora-per-task-lr1e-2", ["after-01"])["after-01"]["alive"]
    assert [r["reference"] for r in scored] == answers and len(answers) == 12
    capsys.readouterr()
    assert main([a if a != "eval" else "test" for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scored on the eval split, and this comparison is on test" in err


def test_lr_tags():
    from moses.report.compare import lr_tag

    assert [lr_tag(x) for x in (1e-4, 3e-4, 1e-3, 0.0025, 0.01, 0.1)] == [
        "1e-4", "3e-4", "1e-3", "2.5e-3", "1e-2", "1e-1"]


def test_compare_seeds_summarises_every_seed_with_seed_aware_intervals(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "seeds"
    args = ["compare", "--methods", "lora-per-task,seq-lora", "--reference", "lora-per-task", "--seeds", "0,1",
            "--model", tiny_model_dir, "--n-train", "8", "--n-test", "8", "--epochs", "1", "--batch-size", "4",
            "--device", "cpu", "--precision", "fp32", "--output", str(output), "--lr", "0.05"]
    assert main(args) == 0
    assert "| method | OP seed 0 | OP seed 1 | OP mean | - lora-per-task |" in capsys.readouterr().out
    rows = {r["method"]: r for r in json.loads((output / "compare_seeds.json").read_text())}
    per_seed = {s: {r["method"]: r for r in json.loads((output / f"seed-{s}" / "compare.json").read_text())}
                for s in (0, 1)}
    assert json.loads((output / "seed-1" / "seq-lora" / "config.json").read_text())["seed"] == 1
    seq = rows["seq-lora"]
    assert seq["OP_per_seed"] == [per_seed[s]["seq-lora"]["OP"] for s in (0, 1)]
    differences = [per_seed[s]["seq-lora"]["OP"] - per_seed[s]["lora-per-task"]["OP"] for s in (0, 1)]
    assert seq["differences"] == pytest.approx(differences)
    assert seq["difference"] == pytest.approx(sum(differences) / 2)
    for key in ("pooled_ci", "t_ci", "seeds_examples_ci"):
        low, high = seq[key]
        assert low <= seq["difference"] <= high, key
    assert rows["lora-per-task"]["t_ci"] is None  # the reference against itself
    assert "t over seeds 95% CI" in (output / "compare_seeds.md").read_text()


def test_compare_seeds_needs_two_different_seeds(tiny_model_dir, tmp_path, capsys):
    args = ["compare", "--methods", "lora-per-task", "--seeds", "3", "--model", tiny_model_dir,
            "--output", str(tmp_path / "c")]
    assert main(args) == 2
    assert "--seeds 3: at least two different seeds" in capsys.readouterr().err

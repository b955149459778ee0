"""`moses compare`: several methods into one table, JSON and bar chart; finished runs are reused."""

import json

from moses.cli import main


def test_compare_writes_table_json_and_png(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "cmp"
    args = ["compare", "--methods", "zero-shot,lora-per-task", "--model", tiny_model_dir, "--n-train", "8",
            "--n-test", "8", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--output", str(output)]
    assert main(args) == 0
    rows = json.loads((output / "compare.json").read_text())
    assert [r["method"] for r in rows] == ["zero-shot", "lora-per-task"]
    assert rows[0]["trainable_parameters"] == 0 and rows[0]["stored_bytes"] == 0
    assert rows[1]["BWT"] == 0.0 and rows[1]["stored_bytes"] > 0
    assert (output / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (output / "compare.png").stat().st_size > 5000
    assert "| lora-per-task |" in (output / "compare.md").read_text()
    capsys.readouterr()
    assert main(args) == 0  # the second time both runs are reused, not retrained
    assert capsys.readouterr().out.count("finished earlier") == 2

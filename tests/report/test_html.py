"""`moses report`: plots produced and non-empty, one self-contained HTML page, TaIL sections."""

import json
import re

import pytest

from moses.cli import main
from moses.report.html import write_report
from moses.runner.run import evaluate_run, run
from runner.test_run import tiny_config


@pytest.fixture(scope="module")
def tail_run(tiny_model_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("report") / "moses"
    results = run(tiny_config(tiny_model_dir, output, tail=True), echo=lambda *_: None)
    evaluate_run(output, mode="tail")
    return output, results


def test_tail_rows_and_task_id_accuracy(tail_run):
    _, results = tail_run
    assert len(results["R_tail"]) == 2 and all(a >= 95.0 for a in results["task_id_accuracy"])
    assert results["R_tail"][0][0] == results["R"][0][0]  # one task learned: inferring it changes nothing


def test_report_files_plots_and_self_contained_html(tail_run):
    output, results = tail_run
    markdown, page = write_report(output, results)
    pngs = sorted(p.name for p in (output / "plots").iterdir())
    assert pngs == ["capacity.png", "loss.png", "reuse.png", "transfer_tail.png", "transfer_til.png"]
    for png in (output / "plots").iterdir():
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
    text = markdown.read_text()
    assert "Score matrix R" in text and "Task-id accuracy" in text and "![Capacity" in text
    assert "Task-id confusion after the last task" in text and "| alive | 8 | 0 |" in text
    document = page.read_text()
    assert document.count("data:image/png;base64,") == 5
    assert not re.search(r'(src|href)="(?!data:)', document)  # nothing to fetch: opens offline
    assert "<table>" in document and "TaIL evaluation of the final model" in document


def test_report_command(tail_run, capsys):
    output, _ = tail_run
    assert main(["report", str(output)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert json.loads((output / "eval-tail.json").read_text())["task_id_accuracy"] >= 95.0


CHROMIUM = __import__("shutil").which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tail_run, tmp_path):
    """The page opens offline in a real browser and every inline plot decodes (naturalWidth > 0)."""
    import subprocess

    output, results = tail_run
    _, page = write_report(output, results)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1100,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 50_000
    probe = tmp_path / "probe.html"  # the report plus a script that writes how many images decoded
    probe.write_text(page.read_text().replace(
        "</body>", "<script>window.onload=()=>{document.title='decoded:'+[...document.images]"
        ".filter(i=>i.naturalWidth>0).length}</script></body>"))
    dom = subprocess.run([CHROMIUM, *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "<title>decoded:5</title>" in dom


def test_report_shows_what_each_task_borrows(tiny_model_dir, tmp_path):
    """Borrowing chosen by loss with growth by need, through the runner: the second task's choice is recorded,
    it adds no subexperts when it borrows (threshold far above any loss), and the report draws the gates."""
    options = {"routing": "task", "router_init": "best", "growth": "loss", "growth_threshold": 100.0}
    output = tmp_path / "grow"
    results = run(tiny_config(tiny_model_dir, output, method_options=options), echo=lambda *_: None)
    first, second = results["capacity"]["tasks"]
    assert (first["own_subexperts"], second["own_subexperts"], second["read_from"]) == (1, 0, first["name"])
    gates = results["capacity"]["gate_matrix"]
    assert gates[0] == [1.0] and gates[1][0] > 1.0 and gates[1][1] == 0.0  # its gate on the first task's grew
    write_report(output, results)
    assert (output / "plots" / "gates.png").stat().st_size > 5000

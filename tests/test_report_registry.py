"""memprof.report's registry: every kind of saved result renders in every format through the one
lookup that `emit` and `memprof report` use, and a kind without renderers is one clear error."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from rich.console import Console

from memprof.report import FORMATS, RENDERERS, renderer
from memprof.results import load_result

ROOT = Path(__file__).resolve().parent.parent
SAVED = [
    ROOT / "tests/golden/inputs/profile-a.json",
    ROOT / "tests/golden/compare-json.json",
    ROOT / "tests/golden/footprint-bloom-3b.json",
    ROOT / "tests/golden/lora-params-bloom-3b.json",
    ROOT / "tests/golden/lora-params-sweep.json",
    ROOT / "reports/validate-cpu-gpt2.json",
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One saved result of every kind, read back as `memprof report` reads it. Plan and serve are
    planned here (catalog models: their shipped simulations) and saved as --json saves them."""
    from memprof import plan
    from memprof.analyses.serve import plan_serving
    from memprof.report.jsonout import render_json

    made = tmp_path_factory.mktemp("saved")
    files = list(SAVED)
    for name, result in (
        ("plan", plan("gpt2", task="lora", seq=128, gpus=("L4",))),
        ("serve", plan_serving("meta-llama/Llama-3.2-1B", context=4096, gpus=("L4",))),
    ):
        path = made / f"{name}.json"
        path.write_text(render_json(result))
        files.append(path)
    return [load_result(f) for f in files]


def test_every_registered_kind_has_a_saved_example(results):
    assert {type(r) for r in results} == set(RENDERERS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_kind_renders_in_every_format(results, fmt):
    for result in results:
        out = renderer(result, fmt)(result)
        if fmt == "table":
            console = Console(width=120, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
            console.print(out)
            text = console.export_text()
        else:
            text = out
        assert text.strip(), (type(result).__name__, fmt)
        if fmt == "json":
            assert json.loads(text)["kind"]
        if fmt == "html":
            assert text.lstrip().lower().startswith("<!doctype html")


def test_an_unregistered_kind_is_one_clear_error():
    @dataclasses.dataclass
    class Unknown:
        x: int = 1

    with pytest.raises(TypeError, match="no renderer for a Unknown: add it to memprof.report.RENDERERS"):
        renderer(Unknown(), "md")
    with pytest.raises(ValueError, match="unknown format 'pdf'"):
        renderer(Unknown(), "pdf")


def test_report_verbose_re_renders_a_verbose_plan_and_leaves_other_kinds_as_they_are(tmp_path, capsys):
    from memprof.cli import main

    saved = tmp_path / "plan.json"
    assert main(["plan", "gpt2", "--seq", "128", "--gpus", "l4", "--json"]) == 0  # simulated: the next two are cached
    assert main(["plan", "gpt2", "--seq", "128", "--gpus", "l4", "--json", "--out", str(saved)]) == 0
    capsys.readouterr()
    assert main(["plan", "gpt2", "--seq", "128", "--gpus", "l4", "-v"]) == 0
    original = capsys.readouterr().out
    assert main(["report", str(saved), "-v"]) == 0
    assert capsys.readouterr().out == original
    profile = ROOT / "tests/golden/inputs/profile-a.json"
    assert main(["report", str(profile), "-v"]) == 0
    verbose = capsys.readouterr().out
    assert main(["report", str(profile)]) == 0
    assert verbose == capsys.readouterr().out  # its table has no verbose form

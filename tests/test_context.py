"""The CUDA context measurement: its arithmetic, its report, and its one-line refusal without a GPU."""

from __future__ import annotations

import json

import pytest

from memprof.measure.context import CudaContext, context_bytes

MIB = 1 << 20


def _measured(context: int, *, catalog_name: str | None = "H100 80GB") -> CudaContext:
    before, reserved = 3 * MIB, 20 * MIB
    return CudaContext(
        device_name="NVIDIA H100 80GB HBM3",
        driver="580.1",
        torch_version="2.13.0",
        cuda_version="13.0",
        memory_bytes=80 * 1024 * MIB,
        used_before_bytes=before,
        used_after_bytes=before + reserved + context,
        reserved_bytes=reserved,
        context_bytes=context_bytes(before, before + reserved + context, reserved),
        catalog_name=catalog_name,
    )


def test_context_is_what_nvml_sees_beyond_the_reserved_memory_and_other_processes():
    assert context_bytes(used_before=3 * MIB, used_after=550 * MIB, reserved=20 * MIB) == 527 * MIB


def test_gpu_file_entry_rounds_up_to_whole_mib_and_is_accepted_by_plan(tmp_path):
    from memprof import catalog

    ctx = _measured(527 * MIB + 1)
    assert ctx.gpu_file_entry() == {"name": "H100 80GB", "context_mib": 528, "context_measured": True}
    gpu_file = tmp_path / "gpus.json"
    gpu_file.write_text(json.dumps({"gpus": [ctx.gpu_file_entry()]}))
    (card,) = [g for g in catalog.gpus_with(gpu_file) if g.name == "H100 80GB"]
    assert card.context_bytes == 528 * MIB and card.context_label == "measured"


def test_a_card_outside_the_catalog_is_named_by_its_device_name():
    assert _measured(500 * MIB, catalog_name=None).gpu_file_entry()["name"] == "NVIDIA H100 80GB HBM3"


def test_report_shows_the_readings_and_the_entry():
    from memprof.report.catalog import render_context_md

    text = render_context_md(_measured(527 * MIB))
    assert "527.00 MiB" in text and '"context_mib": 527' in text and "H100 80GB" in text


def test_without_a_gpu_the_command_is_one_line_and_exit_2(capsys):
    import torch

    from memprof.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the measurement itself runs")
    assert main(["gpus", "--measure-context"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a CUDA GPU" in err


def test_the_entry_printed_for_a_card_outside_the_catalog_is_one_plan_takes(tmp_path):
    from memprof import catalog
    from memprof.report.catalog import render_context_md

    ctx = _measured(500 * MIB, catalog_name=None)
    ctx = CudaContext(**{**ctx.__dict__, "device_name": "NVIDIA Quux 9000"})
    printed = next(line for line in render_context_md(ctx).splitlines() if '{"gpus"' in line)
    entry = printed[printed.index('{"gpus"') : printed.rindex("}") + 1]
    gpu_file = tmp_path / "gpus.json"
    gpu_file.write_text(entry)
    (card,) = catalog.gpus(gpu_file)  # the --gpu-file loader plan uses
    assert card.name == "NVIDIA Quux 9000" and card.context_bytes == 500 * MIB
    assert card.memory_bytes == 80 * 1024 * MIB and card.context_label == "measured"
    assert card in catalog.gpus_with(gpu_file)

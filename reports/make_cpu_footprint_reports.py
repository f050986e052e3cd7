"""Measured footprint reports on this project's CPU machine (2 cores, 24 GiB).

Each setting is loaded for real in a fresh process (random weights written as safetensors first)
and compared with the prediction byte for byte. Re-run: .venv/bin/python reports/make_cpu_footprint_reports.py
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

from memprof.analyses.footprint import footprint
from memprof.commands._common import write_atomic
from memprof.report.footprint import render_footprint_md
from memprof.report.jsonout import render_json

SETTINGS = "fp32,fp16,bf16,int8,nf4,nf4-dq,fp4"
DEFAULT_MODELS = ["openai-community/gpt2", "Qwen/Qwen2.5-0.5B", "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"]


def main(models: list[str]) -> None:
    for model in models:
        report = footprint(model, settings=SETTINGS, measure=True)
        stem = f"footprint-cpu-{model.replace('/', '__')}"  # hub ids hold dots: no with_suffix
        folder = Path(__file__).parent
        command = f"memprof footprint {model} --measure --settings {SETTINGS}"
        header = f"Command: `{command}` ({datetime.date.today()}, {os.cpu_count()} CPU cores)\n\n"
        write_atomic(folder / f"{stem}.json", render_json(report) + "\n")
        write_atomic(folder / f"{stem}.md", header + render_footprint_md(report))
        bad = [r.setting for r in report.settings if r.mismatches or (r.measured and r.measured.error)]
        print(model, "all equal" if not bad else f"DIFFERS: {bad}")


# Guarded: measurement processes import the parent's __main__ module.
if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT_MODELS)

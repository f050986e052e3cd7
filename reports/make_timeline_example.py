"""The timeline of one real training step: GPT-2 (124M, the catalog's config, random weights) in
bf16, batch 2 x 128 tokens, AdamW, on the CPU under the live-bytes tracker, its phases as
`memprof.step.train_step` runs them (the second step is drawn: the first made the optimizer states).

Writes timeline-example.json (the Timeline), .svg (the chart), .txt (the terminal sparklines) and,
where chromium is installed, .png (the chart as headless chromium draws it).
Re-run: .venv/bin/python reports/make_timeline_example.py
"""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from memprof.report.common import render_text


def main() -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from memprof.catalog import find_catalog_model
    from memprof.measure.timeline import timeline_from_tracker
    from memprof.measure.tracker import LiveBytesTracker
    from memprof.report.timeline import timeline_page, timeline_sparklines, timeline_svg
    from memprof.step import make_optimizer, model_parts, train_step

    config = dict(find_catalog_model("openai-community/gpt2").config())
    hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    model.train()
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
    ids = torch.randint(0, hf_config.vocab_size, (2, 128))
    for _ in range(2):
        gc.collect()
        with LiveBytesTracker() as tracker:
            tracker.track(*model_parts(model, optimizer).values(), ids)
            step_start = tracker.last_event
            before = tracker.claims({**model_parts(model, optimizer), "inputs": [ids]})  # last step's grads
            train_step(model, optimizer, ids, phase=tracker.phase)  # memprof's step, its phases tracked
    categories = {**model_parts(model, optimizer), "inputs": [ids]}
    timeline = timeline_from_tracker(
        tracker, categories, other="activations_temporaries", earlier=[before], start_event=step_start
    )

    folder = Path(__file__).parent
    stem = folder / "timeline-example"
    Path(f"{stem}.json").write_text(json.dumps(timeline.to_json(), indent=1) + "\n")
    svg = timeline_svg(timeline, title="GPT-2 124M, bf16, batch 2 x 128, one AdamW step on the CPU")
    Path(f"{stem}.svg").write_text(svg + "\n")
    Path(f"{stem}.txt").write_text(render_text(timeline_sparklines(timeline), width=100))
    print(render_text(timeline_sparklines(timeline), width=100), end="")
    print(f"{tracker.last_event - step_start} events, {len(timeline.points)} points kept")
    chromium = shutil.which("chromium")
    if chromium:
        with tempfile.TemporaryDirectory() as tmp:
            page = Path(tmp) / "timeline.html"
            page.write_text(timeline_page(svg))
            flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            flags += ["--hide-scrollbars", "--window-size=932,392", f"--screenshot={stem}.png"]
            subprocess.run([chromium, *flags, page.as_uri()], check=True, capture_output=True, timeout=120)


if __name__ == "__main__":
    main()

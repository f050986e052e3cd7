"""Renderers for LoraReport and LoraSweep: rich table, Markdown, HTML. Formatting only."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from memprof.report.common import md_table, render_html
from memprof.results.lora import LoraReport, LoraSweep, ModuleParams
from memprof.units import count, human_bytes

KIND_SUFFIX = {"lora": "", "modules_to_save": " (full copy)", "bias": "", "other": ""}


def _alpha(alpha: float) -> str:
    """12.5, 16, 2,000,000: whole alphas with separators, never in exponent notation."""
    return f"{int(alpha):,}" if float(alpha).is_integer() else f"{alpha:g}"


def _method(report: LoraReport) -> str:
    return "DoRA" if report.dora else "LoRA"


def _title(report: LoraReport) -> str:
    return f"{report.model} · {report.architecture} · {report.base_params:,} base parameters"


def _config_line(report: LoraReport) -> str:
    parts = [
        f"{_method(report)} r={report.r}",
        f"alpha={_alpha(report.alpha)} (scaling {report.scaling:g})",
        f"dropout {report.dropout:g}",
        f"bias {report.bias}",
    ]
    if report.modules_to_save:
        parts.append(f"modules_to_save {', '.join(report.modules_to_save)}")
    return " · ".join(parts)


def _targets_line(report: LoraReport) -> str:
    asked = "" if report.target == ",".join(report.target_modules) else f" (from --target {report.target})"
    if report.target == "peft default":
        asked = " (peft's default for this architecture)"
    layers = f"{report.adapted_layers} adapted layer{'' if report.adapted_layers == 1 else 's'}"
    return f"target_modules: {', '.join(report.target_modules)}{asked} · {layers}"


def _rank_warning(report: LoraReport) -> str | None:
    above = report.rank_above_width
    if above is None:
        return None
    if above.layers == report.adapted_layers:
        layers = "the adapted layer" if above.layers == 1 else f"all {above.layers} adapted layers"
    else:
        layers = f"{above.layers} of the {report.adapted_layers} adapted layers"
    return (
        f"r={report.r} is larger than min(in_features, out_features) of {layers} "
        f"({', '.join(above.modules)}; the narrowest is {above.min_width}): peft accepts it, but B·A there has "
        "rank at most that width, so the extra rank adds parameters without adding expressiveness."
    )


def _warnings(result: LoraReport | LoraSweep) -> list[str]:
    rows = result.rows if isinstance(result, LoraSweep) else (result,)
    return [w for w in (_rank_warning(row) for row in rows) if w is not None]


def _per_layer(row: ModuleParams, r: int) -> str:
    if row.kind == "lora" and row.in_features is not None and row.out_features is not None:
        formula = f"{r}·({row.in_features}+{row.out_features})"
        if row.magnitude_per_layer:
            formula += f" + {row.magnitude_per_layer}"
        return f"{formula} = {count(row.params_per_layer)}"
    if row.params_per_layer is not None and row.kind == "modules_to_save":
        return count(row.params_per_layer)
    return "—"


def _layers(row: ModuleParams) -> str:
    return f"{row.layers} tensors" if row.kind in ("bias", "other") else str(row.layers)


def module_rows(report: LoraReport) -> list[list[str]]:
    return [
        [row.name + KIND_SUFFIX[row.kind], _layers(row), _per_layer(row, report.r), count(row.params)]
        for row in report.per_module
    ]


MODULE_HEAD = ["module", "layers", "per layer", "trainable params"]


def _file(report: LoraReport, dtype: str) -> str:
    tensors = getattr(report.adapter_bytes, dtype)
    file_bytes = getattr(report.adapter_file_bytes, dtype)
    return f"{human_bytes(file_bytes)}  ({file_bytes:,} B file: {tensors:,} B of tensors + header)"


def summary_rows(report: LoraReport) -> list[list[str]]:
    state = report.training_state
    rows = [
        ["trainable params", f"{report.trainable_params:,}  ({report.trainable_percent:.4f}% of all)"],
        ["all params (peft)", f"{report.all_params:,}  (base {report.base_params:,} + adapter)"],
        ["adapter file, fp32", _file(report, "fp32")],
        ["adapter file, bf16", _file(report, "bf16")],
        [
            "training state",
            f"{human_bytes(state.total_bytes)} = weights {human_bytes(state.weights_bytes)} + grads "
            f"{human_bytes(state.grads_bytes)} + AdamW moments {human_bytes(state.adamw_moments_bytes)}",
        ],
    ]
    if report.base is not None:
        base = report.base
        qlora = base.qlora_true_bytes is not None and base.qlora_total_bytes is not None
        rows.append(
            [f"base weights at {base.setting}", f"{human_bytes(base.true_bytes)}  ({base.true_bytes:,} B, true bytes)"]
        )
        if qlora:
            rows.append(
                [
                    "  after the QLoRA fp32 cast",
                    f"{human_bytes(base.qlora_true_bytes)}  ({base.qlora_true_bytes:,} B: "
                    f"{base.qlora_cast_params:,} unquantized params in float32)",
                ]
            )
            if base.qlora_step_true_bytes != base.qlora_true_bytes and base.qlora_step_true_bytes is not None:
                rows.append(
                    [
                        "  in the QLoRA step",
                        f"{human_bytes(base.qlora_step_true_bytes)}  ({base.qlora_step_true_bytes:,} B: "
                        "4-bit layers' biases back in the compute dtype)",
                    ]
                )
        rows.append(["base + training state", f"{human_bytes(base.total_bytes)}  ({base.total_bytes:,} B)"])
        if qlora:
            rows.append(
                ["  with the QLoRA cast", f"{human_bytes(base.qlora_total_bytes)}  ({base.qlora_total_bytes:,} B)"]
            )
        if base.peft_printout_all_params != report.all_params:
            rows.append([f"peft printout at {base.setting}", f"all params {base.peft_printout_all_params:,}"])
    return rows


def _state_note(report: LoraReport) -> str:
    state = report.training_state
    return (
        f"Training state basis: {state.basis}. AdamW also keeps a 4-byte step scalar per tensor "
        f"({state.trainable_tensors} tensors, {state.adamw_step_bytes:,} B), on the CPU by default: not counted."
    )


def _notes(report: LoraReport) -> list[str]:
    return [*report.notes, _state_note(report)]


def _module_table(report: LoraReport) -> Table:
    table = Table()
    for i, name in enumerate(MODULE_HEAD):
        table.add_column(name, justify="left" if i == 0 else "right", style="bold" if i == 0 else None)
    for cells in module_rows(report):
        table.add_row(*cells)
    table.add_section()
    table.add_row("total", str(report.adapted_layers), "", count(report.trainable_params), style="bold")
    return table


def _summary_table(report: LoraReport) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column()
    for cells in summary_rows(report):
        table.add_row(*cells)
    return table


def _report_renderables(report: LoraReport) -> Group:
    return Group(
        Text(_title(report), style="bold"),
        _module_table(report),
        Text(_config_line(report)),
        Text(_targets_line(report)),
        *[Text(f"⚠ {warning}", style="bold yellow") for warning in _warnings(report)],
        Text(""),
        _summary_table(report),
        Text(""),
        *[Text(f"• {note}", style="dim") for note in _notes(report)],
    )


SWEEP_HEAD = ["r", "alpha", "trainable", "% of all", "adapter fp32", "adapter bf16", "training state"]


def sweep_rows(sweep: LoraSweep) -> list[list[str]]:
    rows = []
    for row in sweep.rows:
        cells = [
            str(row.r),
            _alpha(row.alpha),
            count(row.trainable_params),
            f"{row.trainable_percent:.4f}%",
            human_bytes(row.adapter_file_bytes.fp32),
            human_bytes(row.adapter_file_bytes.bf16),
            human_bytes(row.training_state.total_bytes),
        ]
        if row.base is not None:
            cells.append(human_bytes(row.base.total_bytes))
        rows.append(cells)
    return rows


def _sweep_head(sweep: LoraSweep) -> list[str]:
    first = sweep.rows[0]
    return SWEEP_HEAD + ([f"base {first.base.setting} + state"] if first.base is not None else [])


def _sweep_table(sweep: LoraSweep) -> Table:
    table = Table()
    for name in _sweep_head(sweep):
        table.add_column(name, justify="right")
    for cells in sweep_rows(sweep):
        table.add_row(*cells)
    return table


def _sweep_lines(sweep: LoraSweep) -> list[str]:
    first = sweep.rows[0]
    lines = [_targets_line(first), f"{_method(first)} · dropout {first.dropout:g} · bias {first.bias}"]
    if first.base is not None:
        lines.append(f"base weights at {first.base.setting}: {human_bytes(first.base.true_bytes)} (true bytes)")
    return lines


def lora_renderables(result: LoraReport | LoraSweep) -> Group:
    if isinstance(result, LoraSweep):
        first = result.rows[0]
        return Group(
            Text(_title(first), style="bold"),
            _sweep_table(result),
            *[Text(line) for line in _sweep_lines(result)],
            *[Text(f"⚠ {warning}", style="bold yellow") for warning in _warnings(result)],
            Text(""),
            *[Text(f"• {note}", style="dim") for note in _notes(first)],
        )
    return _report_renderables(result)


def render_lora_html(result: LoraReport | LoraSweep) -> str:
    return render_html(lora_renderables(result), width=120)


def _md_warnings(result: LoraReport | LoraSweep) -> list[str]:
    return [line for warning in _warnings(result) for line in (f"> **Warning:** {warning}", "")]


def render_lora_md(result: LoraReport | LoraSweep) -> str:
    if isinstance(result, LoraSweep):
        first = result.rows[0]
        lines = [f"## {_title(first)}", "", *[f"{line}  " for line in _sweep_lines(result)], ""]
        lines += _md_warnings(result)
        lines += md_table(_sweep_head(result), sweep_rows(result))
    else:
        first = result
        lines = [f"## {_title(result)}", "", f"{_config_line(result)}  ", _targets_line(result), ""]
        lines += _md_warnings(result)
        lines += md_table(MODULE_HEAD, module_rows(result))
        lines += ["", *md_table(["", ""], summary_rows(result))]
    lines.append("")
    lines += [f"- {note}" for note in _notes(first)]
    return "\n".join(lines) + "\n"

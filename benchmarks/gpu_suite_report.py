"""The GPU suite's markdown: one table per section, from the JSON that ``gpu_suite.py`` writes."""


def _mib(value) -> str:
    return "" if value is None else f"{value / 2 ** 20:.1f}"


def _ms(value) -> str:
    return "" if value is None else f"{value * 1e3:.2f}"


def _ratio(value, base) -> str:
    return f"{value / base:.2f}" if value is not None and base else ""


def _status(data: dict, name: str) -> list:
    part = data.get(name) or {"status": "not run"}
    line = f"*{name}: {part.get('status')}, {part.get('seconds', '?')} s*"
    return [line + (f" - error: `{part['error'][:300]}`" if part.get("error") else ""), ""]


def _ndc(data: dict) -> list:
    part = data.get("ndc_layer") or {}
    settings = part.get("settings", {})
    lines = [f"## NDC layer: C = {settings.get('channels')}, R = {settings.get('ratio')}, {settings.get('size')}^3, "
             f"batch 1, k = 3", "", *_status(data, "ndc_layer"),
             "| path | precision | fwd ms | fwd+bwd ms | fwd+bwd vs naive | peak MiB | runs |",
             "|---|---|---|---|---|---|---|"]
    rows = part.get("rows", {})
    for label, row in rows.items():
        path, precision = label.split(" ", 1)
        naive = rows.get(f"naive {precision}", {}).get("fwd_bwd_s")
        extra = row.get("skipped") or row.get("error") or ""
        lines.append(f"| {path} | {row.get('precision', precision)} | {_ms(row.get('fwd_s'))} "
                     f"| {_ms(row.get('fwd_bwd_s'))} | {_ratio(naive, row.get('fwd_bwd_s'))} "
                     f"| {_mib(row.get('peak_bytes'))} | {row.get('runs', '')} {extra} |")
    return lines + [""]


def _steps(data: dict) -> list:
    part = data.get("network_step") or {}
    plan = data.get("plan") or {}
    lines = [f"## Training step at one plan: patch {plan.get('patch')}, batch {plan.get('batch')}, "
             f"{plan.get('stages')} stages {plan.get('features_per_stage')}; {part.get('precision')}, "
             f"compiled: {part.get('compiled')}", "", *_status(data, "network_step"),
             "| network | trainer | plans | params M | step s (median) | vs PlainConvUNet | first step s (compile) "
             "| max_memory_allocated MiB | vs PlainConvUNet | peak over step start MiB | runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = part.get("networks", {})
    base = rows.get("PlainConvUNet", {})
    for name, row in rows.items():
        extra = row.get("skipped") or row.get("error") or row.get("note") or ""
        params = f"{row['parameters'] / 1e6:.2f}" if "parameters" in row else ""
        first = f"{row['first_step_s']:.1f}" if "first_step_s" in row else ""
        step = f"{row['step_s']:.3f}" if "step_s" in row else ""
        lines.append(f"| {name} | {row.get('trainer', '')} | {row.get('plans', '')} | {params} | {step} "
                     f"| {_ratio(row.get('step_s'), base.get('step_s'))} | {first} "
                     f"| {_mib(row.get('max_memory_allocated'))} "
                     f"| {_ratio(row.get('max_memory_allocated'), base.get('max_memory_allocated'))} "
                     f"| {_mib(row.get('peak_step_bytes'))} | {len(row.get('step_s_runs', []))} {extra} |")
    return lines + [""]


def _memory_model(data: dict) -> list:
    lines = ["## The planner's memory model against the measured peak", "", *_status(data, "memory_model"),
             "| network | predicted MiB | predicted without the workspace margin MiB | measured max_memory_allocated "
             "MiB | measured / predicted without margin |", "|---|---|---|---|---|"]
    for name, row in (data.get("memory_model") or {}).get("rows", {}).items():
        ratio = row.get("measured_over_predicted_without_workspace")
        ratio = "" if ratio is None else f"{ratio:.2f}"
        lines.append(f"| {name} | {_mib(row['predicted_bytes'])} | {_mib(row['predicted_without_workspace_bytes'])} "
                     f"| {_mib(row.get('measured_max_memory_allocated'))} | {ratio} |")
    return lines + [""]


def _training(data: dict) -> list:
    part = data.get("training") or {}
    lines = [f"## nnUNetv2_train: {part.get('epochs')} epochs of {part.get('iterations_per_epoch')} iterations",
             "", *_status(data, "training"),
             "| trainer | wall s | epoch times s | peak GPU memory | GradScaler |", "|---|---|---|---|---|"]
    for trainer, run in part.get("runs", {}).items():
        extra = run.get("skipped") or run.get("error", "")[:300]
        lines.append(f"| {trainer} | {run.get('wall_s', '')} | {', '.join(map(str, run.get('epoch_s', [])))} "
                     f"| {'; '.join(run.get('peak_gpu_memory', []))} | {'; '.join(run.get('grad_scaler', []))} "
                     f"{extra} |")
    return lines + [""]


def markdown(data: dict) -> str:
    head = [f"# GPU suite{' (dry run: plumbing only, not measurements)' if data.get('dry_run') else ''}", "",
            f"{data.get('machine')}; budget {data.get('budget_s')} s, elapsed {data.get('elapsed_s', '?')} s"
            + (f"; {data['stopped']}" if data.get("stopped") else ""), "", *_status(data, "plan")]
    body = _ndc(data) + _steps(data) + _memory_model(data) + _training(data)
    return "\n".join(head + body).replace("\n\n\n", "\n\n")

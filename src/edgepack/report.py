"""``report.md`` and ``report.html`` for an export folder, or for a matrix's output (every export under cells/).

Sections: artifacts and sizes, parity (from parity.json), memory fit per device (``edgepack.plan``, skipped
when unavailable), speed (from bench.json, written by ``edgepack bench``). Plots (matplotlib PNG, saved beside
report.md and embedded as base64 in the HTML): size against parity (KL, the gate drawn), the KL split into
quantization and conversion per artifact, and decode speed per artifact when a bench was run. No cue is colour
alone: pass/fail is also a marker shape and a word, edgepack against anchors also a hatch.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgepack import __version__
from edgepack.errors import ArtifactError, EdgepackError
from edgepack.export_record import EXPORT_FILE, ExportRecord, is_export_folder

PARITY_COLUMNS = ("cosine", "top1", "top5_overlap", "kl", "greedy_agreement", "max_abs_diff")
PLOTS = {"size_parity": "report-size-parity.png", "kl_split": "report-kl-split.png",
         "decode_speed": "report-decode-speed.png"}  # fmt: skip
GATES = {"cosine": "min_cosine", "top1": "min_top1", "top5_overlap": "min_top5_overlap", "kl": "max_kl",
         "greedy_agreement": "min_greedy_agreement", "max_abs_diff": "max_abs_diff"}  # metric -> threshold key


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Report:
    title: str
    subtitle: str
    tables: list[Table] = field(default_factory=list)
    plots: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG bytes


def write_report(folder: str | Path, *, bench_file: str | Path | None = None) -> list[Path]:
    """Write report.md, report.html and the plot PNGs into ``folder``; return their paths."""
    folder = Path(folder)
    report = build_report(folder, bench_file=bench_file)
    written = []
    for name, png in report.plots.items():
        (folder / name).write_bytes(png)
        written.append(folder / name)
    (folder / "report.md").write_text(to_markdown(report))
    (folder / "report.html").write_text(to_html(report))
    return [folder / "report.md", folder / "report.html", *written]


def build_report(folder: Path, *, bench_file: str | Path | None = None) -> Report:
    exports = export_folders(folder)
    records = {e: ExportRecord.read(e) for e in exports}
    rows = [row for e in exports for row in _artifact_rows(e, records[e])]
    benches = _benches(folder, exports, bench_file)
    first = records[exports[0]]
    models = sorted({r.model_id for r in records.values()})
    recipes = sorted({r.recipe_name for r in records.values()})
    subtitle = f"recipe(s) {', '.join(recipes)}; max_seq_len {first.max_seq_len}; edgepack {__version__}; "
    report = Report(f"edgepack report: {', '.join(models)}", subtitle + time.strftime("written %Y-%m-%d %H:%M"))
    report.tables.append(_sizes_table(rows))
    report.tables.append(_parity_table(rows))
    plan = _plan_table(exports)
    if plan:
        report.tables.append(plan)
    speed = [m for b in benches for m in b["results"]]
    if speed:
        report.tables.append(_speed_table(benches))
    report.plots = _plots(rows, speed)
    return report


def export_folders(folder: Path) -> list[Path]:
    """The export folder itself, or every export folder under a matrix output's cells/."""
    if is_export_folder(folder):
        return [folder]
    # edgepack matrix writes each cell to cells/<model>/<recipe>/<target>/
    found = sorted(p.parent for p in (folder / "cells").rglob(EXPORT_FILE))
    if not found:
        raise ArtifactError(
            f"{folder} is neither an export folder (no export.json) nor a matrix output (no export.json under cells/)."
        )
    return found


def export_label(export: Path) -> str:
    """An export's name in the tables: its cell (model/recipe/target) in a matrix output, else its folder name."""
    parts = export.parts
    if "cells" not in parts[:-1]:
        return export.name
    return "/".join(parts[len(parts) - parts[::-1].index("cells") :])


def _artifact_rows(export: Path, record: ExportRecord) -> list[dict]:
    from edgepack.bench import artifact_bytes
    from edgepack.backends import ARTIFACT_FILE, Artifact

    parity = {}
    if (export / "parity.json").is_file():
        parity = {a["path"]: a for a in json.loads((export / "parity.json").read_text())["artifacts"]}
    rows = []
    for art_file in sorted(export.glob(f"*/{ARTIFACT_FILE}")):
        art = Artifact.read(art_file.parent)
        rows.append({
            "export": export_label(export), "model": record.model_id, "recipe": art.recipe,
            "target": art.target, "runtime": art.runtime, "path": art.path, "bits": art.weight_bits,
            "bytes": artifact_bytes(export, art.files), "max_seq_len": art.max_seq_len,
            "export_seconds": art.export_seconds, "unhonoured": art.unhonoured, "parity": parity.get(art.path),
        })  # fmt: skip
    return rows


def _label(row: dict, many: bool) -> str:
    return f"{row['export']}/{row['target']}" if many else row["target"]


def _sizes_table(rows: list[dict]) -> Table:
    many = len({r["export"] for r in rows}) > 1
    body = [
        [_label(r, many), r["recipe"], r["runtime"], r["path"], str(r["bits"]), _mb(r["bytes"]),
         str(r["max_seq_len"]), f"{r['export_seconds']:.0f}", "; ".join(r["unhonoured"]) or "-"]
        for r in rows
    ]  # fmt: skip
    header = ["artifact", "recipe", "runtime", "path", "weight bits", "MB", "max_seq_len", "export s", "unhonoured"]
    return Table("Artifacts", header, body, "MB: model files only (weights and graph; not tokenizer or config).")


def _parity_table(rows: list[dict]) -> Table:
    many = len({r["export"] for r in rows}) > 1
    body = []
    for r in rows:
        p = r["parity"]
        if p is None:
            body.append([_label(r, many), "not checked"] + ["-"] * (len(PARITY_COLUMNS) + 2))
            continue
        verdict = "pass" if p["passed"] else "FAIL: " + ", ".join(f["metric"] for f in p["failures"])
        split = p.get("split") or {}
        body.append([_label(r, many), verdict]
                    + [_gated(p["metrics"].get(c), (p.get("thresholds") or {}).get(GATES[c])) for c in PARITY_COLUMNS]
                    + [_num((split.get(half) or {}).get("kl")) for half in ("quantization", "conversion")])  # fmt: skip
    header = ["artifact", "verdict", *PARITY_COLUMNS, "quantization KL", "conversion KL"]
    return Table("Parity against the fp32 reference", header, body,
                 "From parity.json (edgepack parity): teacher-forced logits over the parity prompts. Each metric shows "
                 "its recipe threshold in brackets (>= for similarity, <= for KL and max abs diff).\n"
                 "Split: quantization = the artifact's own codes in the eager model vs fp32; conversion = the artifact "
                 "vs that quantized eager model.")  # fmt: skip


def _plan_table(exports: list[Path]) -> Table | None:
    try:
        from edgepack.plan import plan_export
    except ImportError:
        return None  # planning ships separately; a report without it is still useful
    columns, cells = [], {}
    for export in exports:
        try:
            plans = plan_export(export, "all")
        except EdgepackError as exc:
            return Table("Memory fit per device", ["note"], [[f"planning failed: {exc}"]])
        columns.append(export_label(export))
        for p in plans:
            fit = "cloud only" if p.cloud_only else f"{p.target} {p.recipe}, {p.max_context} tokens"
            if p.estimate is not None and not p.cloud_only:
                fit += f" ({p.estimate.total / 2**20:.0f} MiB)"
            cells.setdefault(p.device, {})[export_label(export)] = fit + (f"; needs {p.extended}" if p.extended else "")
    header = ["device"] + (columns if len(columns) > 1 else ["best fit (estimated memory at that context)"])
    body = [[device] + [row.get(c, "-") for c in columns] for device, row in cells.items()]
    return Table("Memory fit per device", header, body, "From edgepack.plan: weights + KV cache + runtime overhead.")


def _benches(folder: Path, exports: list[Path], bench_file) -> list[dict]:
    files = [Path(bench_file)] if bench_file else [e / "bench.json" for e in exports]
    if not bench_file and (folder / "bench.json").is_file() and folder not in exports:
        files.append(folder / "bench.json")
    return [json.loads(f.read_text()) for f in files if f.is_file()]


def _speed_table(benches: list[dict]) -> Table:
    body, notes = [], []
    for b in benches:
        for m in b["results"]:
            if m["error"]:
                body.append([m["name"], m["error"]] + ["-"] * 6)
                continue
            body.append([m["name"], m["runtime"], _mb(m["bytes"]), f"{m['ttft_seconds'] * 1e3:.1f}",
                         f"{m['prefill_tokens_per_second']:.1f}", f"{m['decode_tokens_per_second']:.1f}",
                         f"{m['peak_rss_bytes'] / 2**20:.0f}", f"{m['load_seconds']:.2f}"])  # fmt: skip
            notes += [f"{m['name']}: {m['note']}"] if m["note"] else []
        p, mach = b["protocol"], b["machine"]
        notes.append(
            f"prompt {p['prompt_tokens']} tokens, decode {p['decode_tokens']}, median of {p['repeats']} runs after "
            f"{p['warmup']} warm-up; {mach['processor']}, {mach['cpus']} cpus, threads {p['threads'] or mach['cpus']}; "
            f"load average before {mach.get('load_average_before')}, after {mach.get('load_average_after')}"
        )
    header = ["artifact", "runtime", "MB", "TTFT ms", "prefill tok/s", "decode tok/s", "peak RSS MiB", "load s"]
    return Table("Speed and memory on this host (edgepack bench)", header, body, "\n".join(notes))


def _plots(rows: list[dict], speed: list[dict]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")  # no display; PNG bytes only
    plots = {}
    checked = [r for r in rows if r["parity"]]
    if checked:
        plots[PLOTS["size_parity"]] = _size_parity_plot(checked)
        plots[PLOTS["kl_split"]] = _split_plot(checked)
    measured = [m for m in speed if not m["error"]]
    if measured:
        plots[PLOTS["decode_speed"]] = _speed_plot(measured)
    return plots


def _size_parity_plot(rows: list[dict]) -> bytes:
    import matplotlib.pyplot as plt

    many = len({r["export"] for r in rows}) > 1
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for r in rows:
        x, y, passed = r["bytes"] / 1e6, r["parity"]["metrics"]["kl"], r["parity"]["passed"]
        ax.scatter([x], [y], s=60, marker="o" if passed else "X", color="tab:green" if passed else "tab:red", zorder=3)
        label = f"{_label(r, many)} ({'pass' if passed else 'FAIL'})"
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    gates = sorted({g for r in rows if (g := (r["parity"].get("thresholds") or {}).get("max_kl")) is not None})
    for gate in gates:
        ax.axhline(gate, linestyle="--", color="0.4", linewidth=1)
        ax.annotate(f"max_kl gate {gate:g}", (0, gate), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xlabel("artifact size (MB)")
    ax.set_ylabel("mean KL(reference || artifact), lower is better")
    ax.set_title("Size against parity (circle: passed, cross: failed)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.25, y=0.25)
    ax.set_xlim(0, max(r["bytes"] for r in rows) / 1e6 * 1.25)  # room for the labels of the largest
    ax.set_ylim(bottom=0, top=max([r["parity"]["metrics"]["kl"] for r in rows] + gates) * 1.25 or 1e-6)
    return _png(fig)


def _split_plot(rows: list[dict]) -> bytes:
    """Per artifact, the KL of quantization (the codes) and of conversion (the backend), side by side."""
    import matplotlib.pyplot as plt
    import numpy as np

    many = len({r["export"] for r in rows}) > 1
    names = [_label(r, many) for r in rows]
    halves = {h: [((r["parity"].get("split") or {}).get(h) or {}).get("kl") or 0.0 for r in rows]
              for h in ("quantization", "conversion")}  # fmt: skip
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6.4, 0.6 * len(rows) + 1.6), dpi=110)
    for i, (half, hatch) in enumerate((("quantization", ""), ("conversion", "//"))):
        bars = ax.barh(y + (i - 0.5) * 0.38, halves[half], height=0.36, hatch=hatch, label=half,
                       color="tab:blue" if i == 0 else "tab:orange", edgecolor="black")  # fmt: skip
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in halves[half]], padding=3, fontsize=7)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("mean KL against fp32 (nats), lower is better")
    ax.set_title("Where the error comes from: quantization (plain) vs conversion (hatched)")
    ax.legend(fontsize=8, loc="lower right")
    ax.margins(x=0.3)
    fig.tight_layout()
    return _png(fig)


def _speed_plot(measured: list[dict]) -> bytes:
    import matplotlib.pyplot as plt

    names = [m["name"] + (" *" if m["note"].startswith("simulated") else "") for m in measured]
    values = [m["decode_tokens_per_second"] for m in measured]
    ours = [m["name"].startswith("edgepack") for m in measured]
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(measured) + 1.4), dpi=110)
    bars = ax.barh(names, values, color=["tab:blue" if o else "tab:gray" for o in ours], edgecolor="black")
    for bar, o in zip(bars, ours):
        bar.set_hatch("" if o else "..")
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], padding=3, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("decode tokens/s (median), higher is better")
    ax.set_title("Decode speed per artifact (plain: edgepack, dotted: anchors)")
    ax.margins(x=0.15)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# ---- rendering ----


def to_markdown(report: Report) -> str:
    lines = [f"# {report.title}", "", report.subtitle, ""]
    for t in report.tables:
        lines += [f"## {t.title}", "", "| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t.rows]
        lines += [""] + ([line + "  " for line in t.note.splitlines()] + [""] if t.note else [])
    if report.plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in report.plots] + [""]
    return "\n".join(lines)


def to_html(report: Report) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(report.title)}</h1><p>{e(report.subtitle)}</p>",
    ]
    for t in report.tables:
        parts.append(f"<h2>{e(t.title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in t.rows]
        parts.append("</table>" + (f"<p class='note'>{'<br>'.join(map(e, t.note.splitlines()))}</p>" if t.note else ""))
    if report.plots:
        parts.append("<h2>Plots</h2>")
        for name, png in report.plots.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<figure><img alt='{e(name)}' src='data:image/png;base64,{data}'></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:72em}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;font-size:.9em}"
    "th{background:#f3f3f3;text-align:left}.note{color:#555;font-size:.85em}img{max-width:100%}"
)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


def _gated(value, gate) -> str:
    return _num(value) + (f" ({gate:g})" if value is not None and gate is not None else "")


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"

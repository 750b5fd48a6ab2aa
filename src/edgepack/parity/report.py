"""Parity reports: parity.json (stable fields, see docs/parity.md), parity.junit.xml (one test case per
artifact and metric, for CI dashboards) and parity.md (for a person)."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

from edgepack.atomic import write_text
from edgepack.manifest import PARITY_FILE
from edgepack.parity.metrics import METRICS, THRESHOLDS

JSON_FILE, JUNIT_FILE, MARKDOWN_FILE = PARITY_FILE, "parity.junit.xml", "parity.md"


def write_reports(root: Path, report) -> None:
    """parity.json, .junit.xml and .md, each replaced atomically (a reader never sees half a report)."""
    for name, text in ((JSON_FILE, json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n"),
                       (JUNIT_FILE, junit(report)), (MARKDOWN_FILE, markdown(report))):  # fmt: skip
        write_text(root / name, text)


def junit(report) -> str:
    suite = ET.Element("testsuite", name="edgepack.parity")
    cases = failed = 0
    for a in report.artifacts:
        sections = [("prompts", a.metrics)] + ([("text", a.text["metrics"])] if a.text else [])
        for on, measured in sections:
            for key, (metric, at_most) in THRESHOLDS.items():
                limit = a.thresholds.get(key)
                if limit is None or metric not in measured:
                    continue
                cases += 1
                name = f"{a.path}::{metric}" if on == "prompts" else f"{a.path}::text::{metric}"
                case = ET.SubElement(suite, "testcase", classname=f"parity.{a.target}", name=name)
                value = measured[metric]
                ET.SubElement(case, "system-out").text = f"{metric}={value:.6g} threshold={limit:.6g}"
                if any(f["metric"] == metric and f.get("on", "prompts") == on for f in a.failures):
                    failed += 1
                    op = "<=" if at_most else ">="
                    ET.SubElement(case, "failure", message=f"{metric} = {value:.6g}, must be {op} {limit:.6g}")
    suite.set("tests", str(cases))
    suite.set("failures", str(failed))
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def markdown(report) -> str:
    verdict = "PASSED" if report.passed else "FAILED"
    lines = [
        f"# Parity: {verdict}",
        "",
        f"Reference: `{report.reference['model']}` in eager transformers, fp32. {report.prompts} prompts, "
        f"teacher-forced over each prompt plus {report.decode_steps} decode steps.",
        "",
        "| artifact | recipe | " + " | ".join(METRICS) + " | result |",
        "|---|---|" + "---|" * len(METRICS) + "---|",
    ]
    for a in report.artifacts:
        cells = " | ".join(_fmt(a.metrics.get(m)) for m in METRICS)
        lines.append(f"| `{a.path}` | {a.recipe} | {cells} | {'pass' if a.passed else '**FAIL**'} |")
    splits = [a for a in report.artifacts if a.split]
    if splits:
        lines += ["", "## Where the error comes from", "",
                  "quantization: the recipe applied in eager torch vs fp32. conversion: the export vs that "
                  "quantized eager model.", "",
                  "| artifact | part | max_abs_diff | cosine | top1 | kl |", "|---|---|---|---|---|---|"]
        for a in splits:
            for part in ("quantization", "conversion"):
                m = a.split[part]
                lines.append(f"| `{a.path}` | {part} | {_fmt(m['max_abs_diff'])} | {_fmt(m['cosine'])} | "
                             f"{_fmt(m['top1'])} | {_fmt(m['kl'])} |")
    if report.text:
        t = report.text
        lines += ["", "## Long text", "",
                  f"`{t['source']}`: {t['tokens']} tokens in {t['windows']} windows, each one prefill, teacher-forced. "
                  "ppl: the text's perplexity under the artifact; ratio: over the fp32 reference's.", "",
                  "| artifact | part | top1 | kl | cosine | ppl | ppl ratio |", "|---|---|---|---|---|---|---|"]
        for a in report.artifacts:
            parts = [("export", a.text["metrics"])] + list((a.text["split"] or {}).items())
            for part, m in parts:
                lines.append(f"| `{a.path}` | {part} | {_fmt(m['top1'])} | {_fmt(m['kl'])} | {_fmt(m['cosine'])} | "
                             f"{m['ppl']:.3f} | {m['ppl_ratio']:.3f} |")
        lines.append(f"\nReference perplexity: {report.artifacts[0].text['metrics']['ppl_reference']:.3f}.")
    failures = [(a, f) for a in report.artifacts for f in a.failures]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [f"- `{a.path}`: {f['metric']}{' on the text' if f.get('on') == 'text' else ''} = "
                  f"{_fmt(f['value'])} (threshold {_fmt(f['threshold'])})" for a, f in failures]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3e}" if abs(value) < 1e-2 and value != 0 else f"{value:.4f}"

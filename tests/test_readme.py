"""The README's "Run your artifacts" snippets, run verbatim against a real export of SmolLM2 (slow tier).

The snippets name ``artifacts/demo`` (``make demo``'s output); the test points that one line at the session's
SmolLM2 int4-block32 export (the same model, recipe and targets) and runs each Python block as a user would, in a
fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
DEMO_LINE = 'export = "artifacts/demo"'


def section() -> str:
    return README.read_text().split("## Run your artifacts", 1)[1].split("\n## ", 1)[0]


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", section(), flags=re.S)


def test_the_readme_shows_every_runtime():
    snippets = python_snippets()
    assert len(snippets) == 4 and all(DEMO_LINE in s for s in snippets)
    assert "TextLLMRunner" in snippets[0] and "onnxruntime_genai" in snippets[1] and "mlx_lm" in snippets[2]
    assert "llama_cpp" in snippets[3]
    assert "```swift" in section()


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1, 2, 3], ids=["executorch-llm-runner", "onnxruntime-genai", "mlx-lm", "llama.cpp"])
def test_readme_snippet_answers_paris(smollm2_int4, index):
    if index == 3:
        from helpers import ensure_llama_cpp

        ensure_llama_cpp()
    code = python_snippets()[index].replace(DEMO_LINE, f"export = {str(smollm2_int4)!r}")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(f"\nsnippet {index}: {proc.stdout!r}")
    assert "Paris" in proc.stdout

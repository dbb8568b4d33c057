"""The README's picture of the graph (docs/pipeline-vertex.png) is drawn from the pipeline compiled
now: its DOT source matches what `scripts/draw_pipeline.py` makes of a fresh compile, and the PNG
records that source's hash. Regenerate both with `python scripts/draw_pipeline.py`."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOW = "the pipeline changed: run `python scripts/draw_pipeline.py` (needs graphviz) and commit docs/pipeline-vertex.*"


def _script():
    spec = importlib.util.spec_from_file_location("draw_pipeline", ROOT / "scripts" / "draw_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_picture_is_drawn_from_the_compiled_graph(tmp_path):
    draw = _script()
    source = draw.dot_source(draw.compile_vertex(tmp_path / "vertex.yaml"))
    committed = (ROOT / "docs" / "pipeline-vertex.dot").read_text()
    assert committed == source, HOW
    png = (ROOT / "docs" / "pipeline-vertex.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert draw.png_source_hash(png) == hashlib.sha256(source.encode()).hexdigest(), HOW
    # what a person looks for: each stage once, by the name the console shows
    for stage in ("Validate Inputs", "AI Feedback Labels", "Supervised Fine-Tuning", "Train Reward Model",
                  "Tune Policy", "Evaluate", "Upload and Deploy"):
        assert source.count(f'label="{stage}"') == 1, stage


def test_a_changed_graph_draws_differently(tmp_path):
    draw = _script()
    spec = draw.compile_vertex(tmp_path / "vertex.yaml")
    before = draw.dot_source(spec)
    spec["root"]["dag"]["tasks"]["tune-policy"]["taskInfo"]["name"] = "Tune Policy (renamed)"
    assert draw.dot_source(spec) != before

"""Draw the compiled pipeline as the Vertex AI console shows a run: the root's tasks by display name,
in the order data flows, conditions as dashed boxes. Writes a Graphviz DOT file and renders it to
PNG with Graphviz's `dot` (Debian: apt-get install graphviz); the PNG records the DOT's SHA-256, so
tests/test_pipeline_picture.py can tell a picture drawn from another graph.

    python scripts/draw_pipeline.py                       # docs/pipeline-vertex.dot and .png
    python scripts/draw_pipeline.py --template my.yaml --output /tmp/graph
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "docs" / "pipeline-vertex"
PNG_KEY = "rlhf-dot-sha256"  # the tEXt chunk that names the DOT source a picture was drawn from


def _condition_label(condition: str) -> str:
    """`inputs.parameter_values['pipelinechannel--supervised_tuning'] != 'off'` -> `supervised_tuning != 'off'`."""
    text = condition.replace("inputs.parameter_values['pipelinechannel--", "").replace("']", "")
    return text.replace("!(", "not (")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot_source(spec: dict) -> str:
    """The root DAG of a compiled pipeline spec as Graphviz DOT, deterministic for a given spec."""
    components = spec["components"]
    lines = ["digraph rlhf_pipeline {", "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fillcolor="#e8f0fe", fontname="Helvetica"];',
             '  edge [color="#5f6368"];']
    nodes: dict[str, str] = {}  # task path -> node id

    def add(tasks: dict, indent: str, prefix: str) -> None:
        for name in sorted(tasks):
            task = tasks[name]
            ref = components[task["componentRef"]["name"]]
            path = f"{prefix}{name}"
            if "dag" in ref and name.startswith("condition"):  # a condition: open it, dashed
                condition = task.get("triggerPolicy", {}).get("condition")
                lines.append(f"{indent}subgraph cluster_{path.replace('-', '_').replace('/', '__')} {{")
                lines.append(f'{indent}  style=dashed; color="#9aa0a6"; fontname="Helvetica"; '
                             f"label={_quote(_condition_label(condition) if condition else '')};")
                add(ref["dag"]["tasks"], indent + "  ", f"{path}/")
                lines.append(f"{indent}}}")
                nodes[path] = nodes.get(path, "")
                continue
            node = f"n{sum(1 for n in nodes.values() if n)}"
            nodes[path] = node
            label = task["taskInfo"]["name"]
            extra = ', fillcolor="#fce8e6"' if "dag" in ref else ""  # a sub-pipeline the console opens
            lines.append(f"{indent}{node} [label={_quote(label)}{extra}];")

    add(spec["root"]["dag"]["tasks"], "  ", "")

    def leaves(path: str) -> list[str]:
        """The drawn nodes a task path stands for (a condition: every node inside it)."""
        if nodes.get(path):
            return [nodes[path]]
        return [n for p, n in nodes.items() if p.startswith(path + "/") and n]

    edges = set()

    def connect(tasks: dict, prefix: str) -> None:
        for name, task in tasks.items():
            ref = components[task["componentRef"]["name"]]
            for upstream in task.get("dependentTasks", []):
                for a in leaves(f"{prefix}{upstream}"):
                    for b in leaves(f"{prefix}{name}"):
                        edges.add((a, b))
            if "dag" in ref and name.startswith("condition"):
                connect(ref["dag"]["tasks"], f"{prefix}{name}/")

    connect(spec["root"]["dag"]["tasks"], "")
    lines += [f"  {a} -> {b};" for a, b in sorted(_reduced(edges), key=lambda e: (int(e[0][1:]), int(e[1][1:])))]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _reduced(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Without an edge a -> c that a longer path a -> ... -> c already implies (what a reader follows)."""
    after: dict[str, set[str]] = {}
    for a, b in edges:
        after.setdefault(a, set()).add(b)

    def reachable(start: str, skip_direct: str) -> bool:
        seen, todo = set(), [n for n in after.get(start, ()) if n != skip_direct]
        while todo:
            node = todo.pop()
            if node == skip_direct:
                return True
            if node not in seen:
                seen.add(node)
                todo += after.get(node, ())
        return False
    return {(a, b) for a, b in edges if not reachable(a, b)}


def png_source_hash(png: bytes) -> str | None:
    """The DOT SHA-256 a picture records (None if it records none)."""
    at = 8
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        data = png[at + 8:at + 8 + length]
        if kind == b"tEXt" and data.startswith(PNG_KEY.encode() + b"\0"):
            return data.split(b"\0", 1)[1].decode()
        at += 12 + length
    return None


def _with_source_hash(png: bytes, digest: str) -> bytes:
    """`png` with a tEXt chunk naming the DOT it was drawn from, right after the header chunk."""
    data = PNG_KEY.encode() + b"\0" + digest.encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    header_end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:header_end] + chunk + png[header_end:]


def compile_vertex(path: Path) -> dict:
    subprocess.run([sys.executable, "-m", "rlhf", "compile", "--target", "vertex", "--output", str(path)],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    return yaml.safe_load(path.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", help="a compiled pipeline YAML (default: compile the Vertex AI one)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="path without extension: writes .dot and .png")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load(Path(args.template).read_text()) if args.template else compile_vertex(out.with_suffix(".yaml"))
    if not args.template:
        out.with_suffix(".yaml").unlink()
    source = dot_source(spec)
    out.with_suffix(".dot").write_text(source)
    rendered = subprocess.run(["dot", "-Tpng", "-Gdpi=110"], input=source.encode(), capture_output=True)
    if rendered.returncode != 0:
        print(f"error: graphviz's dot failed: {rendered.stderr.decode()[-500:]}", file=sys.stderr)
        return 1
    digest = hashlib.sha256(source.encode()).hexdigest()
    out.with_suffix(".png").write_bytes(_with_source_hash(rendered.stdout, digest))
    print(f"wrote {out.with_suffix('.dot')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

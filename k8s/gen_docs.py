"""Generate the chart's README parameters table and values.schema.json from values.yaml.

Why: hand-written values docs drift from values.yaml. Here the `## @param` comments in
values.yaml are the single source; this script renders both the README table (between the
`<!-- parameters:start -->` and `<!-- parameters:end -->` markers) and the JSON schema Helm
validates values against, and `--check` fails when either file is stale or a value is undocumented.

Comment syntax (bitnami style): `## @section <title>` starts a README table;
`## @param <path> [modifiers] <description>` documents a value. `a.b[].c` documents field `c` of
every item of list `a.b`. Modifiers, comma separated: a JSON type (string, integer, number,
boolean, object, array) when the default does not show it, `nullable`, `enum:x|y|z`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parent / "vlf"
README_START = "<!-- parameters:start -->"
README_END = "<!-- parameters:end -->"
PARAM_RE = re.compile(r"^\s*## @param (?P<path>\S+)(?: \[(?P<mods>[^\]]*)\])? (?P<description>.+)$")
SECTION_RE = re.compile(r"^\s*## @section (?P<title>.+)$")
JSON_TYPES = {"string", "integer", "number", "boolean", "object", "array"}
MISSING = object()


@dataclass(frozen=True)
class Param:
    """One documented value."""

    path: str
    description: str
    section: str
    json_type: str | None
    nullable: bool
    enum: tuple[str, ...] | None


class DocsError(Exception):
    """values.yaml and its @param comments disagree; the message lists every problem."""


def parse_params(values_text: str) -> list[Param]:
    """Read the @section and @param comments in file order."""
    params: list[Param] = []
    section = "Parameters"
    for line in values_text.splitlines():
        if match := SECTION_RE.match(line):
            section = match["title"].strip()
        elif match := PARAM_RE.match(line):
            params.append(_param(match["path"], match["description"].strip(), section, match["mods"] or ""))
    return params


def _param(path: str, description: str, section: str, modifiers: str) -> Param:
    json_type, nullable, enum = None, False, None
    for modifier in (m.strip() for m in modifiers.split(",") if m.strip()):
        if modifier in JSON_TYPES:
            json_type = modifier
        elif modifier == "nullable":
            nullable = True
        elif modifier.startswith("enum:"):
            enum = tuple(modifier.removeprefix("enum:").split("|"))
        else:
            raise DocsError(f"{path}: unknown modifier {modifier!r}")
    return Param(path, description, section, json_type, nullable, enum)


def lookup(values: Any, path: str) -> Any:
    """The default at a documented path; `x[]` looks in the first item of list x. MISSING if absent."""
    node = values
    for segment in path.split("."):
        is_item = segment.endswith("[]")
        key = segment.removesuffix("[]")
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
        if is_item:
            if not isinstance(node, list) or not node:
                return MISSING
            node = node[0]
    return node


def leaf_paths(values: Any, prefix: str = "") -> list[str]:
    """Every path a reader could set: scalars, empty or opaque containers, and list-item fields."""
    if isinstance(values, dict) and values:
        paths = []
        for key, child in values.items():
            paths.extend(leaf_paths(child, f"{prefix}.{key}" if prefix else str(key)))
        return paths
    if isinstance(values, list) and values and all(isinstance(item, dict) for item in values):
        paths = []
        for item in values:
            paths.extend(leaf_paths(item, f"{prefix}[]"))
        return sorted(set(paths), key=paths.index)
    return [prefix]


def check_documented(values: dict[str, Any], params: list[Param]) -> None:
    """Fail with every undocumented value and every @param naming no value."""
    documented = {p.path for p in params}
    item_documented = {d.split("[]")[0] for d in documented if "[]" in d}
    problems = []
    for path in leaf_paths(values):
        if not any(_covers(d, path, item_documented) for d in documented):
            problems.append(f"undocumented value: {path}")
    for param in params:
        if "[]" not in param.path and lookup(values, param.path) is MISSING:
            problems.append(f"@param names no value in values.yaml: {param.path}")
        if param.json_type is None and lookup(values, param.path) is MISSING:
            problems.append(f"@param {param.path}: no default to infer a type from; add [type]")
    duplicates = sorted({p.path for p in params if [q.path for q in params].count(p.path) > 1})
    problems.extend(f"@param documented twice: {path}" for path in duplicates)
    if problems:
        raise DocsError("\n".join(problems))


def _covers(documented: str, path: str, item_documented: set[str]) -> bool:
    """A @param covers its path and everything under it; a list's items unless their fields have @params."""
    if path == documented or path.startswith(documented + "."):
        return True
    return path.startswith(documented + "[]") and documented not in item_documented


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _leaf_schema(param: Param, default: Any) -> dict[str, Any]:
    json_type = param.json_type or _json_type(default)
    schema: dict[str, Any] = {"type": [json_type, "null"] if param.nullable else json_type}
    schema["description"] = param.description
    if param.enum is not None:
        schema["enum"] = list(param.enum)
    if default is not MISSING and "[]" not in param.path:
        schema["default"] = default
    return schema


def _object_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {}, "additionalProperties": False}


def build_schema(values: dict[str, Any], params: list[Param]) -> dict[str, Any]:
    """JSON schema of the values: documented leaves typed from their defaults, no unknown keys."""
    root = _object_schema()
    root["$schema"] = "http://json-schema.org/draft-07/schema#"
    for param in params:
        node = root
        segments = param.path.split(".")
        for segment in segments[:-1]:
            key = segment.removesuffix("[]")
            node = node["properties"].setdefault(key, _object_schema())
            if segment.endswith("[]"):
                node = node.setdefault("items", _object_schema())
        last = segments[-1]
        node["properties"][last] = {
            **node["properties"].get(last, {}),
            **_leaf_schema(param, lookup(values, param.path)),
        }
    return root


def _format_value(value: Any) -> str:
    if value is MISSING:
        return ""
    return "`" + json.dumps(value, separators=(", ", ": ")).replace("|", "\\|") + "`"


def render_table(values: dict[str, Any], params: list[Param]) -> str:
    """The README parameters section: one table per @section."""
    lines: list[str] = []
    section = None
    for param in params:
        if param.section != section:
            section = param.section
            lines += ["", f"### {section}", "", "| Name | Description | Value |", "| --- | --- | --- |"]
        description = param.description.replace("|", "\\|")
        lines.append(f"| `{param.path}` | {description} | {_format_value(lookup(values, param.path))} |")
    return "\n".join(lines).strip() + "\n"


def render_readme(readme: str, table: str) -> str:
    """The README with the text between the markers replaced by the table."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise DocsError(f"README lacks the markers {README_START} ... {README_END}")
    return readme[: start + len(README_START)] + "\n\n" + table + "\n" + readme[end:]


def generated_files(chart_dir: Path) -> dict[Path, str]:
    """The README and schema as they should be, keyed by path."""
    values_text = (chart_dir / "values.yaml").read_text()
    values = yaml.safe_load(values_text)
    params = parse_params(values_text)
    check_documented(values, params)
    readme_path = chart_dir / "README.md"
    schema = json.dumps(build_schema(values, params), indent=2) + "\n"
    return {
        readme_path: render_readme(readme_path.read_text(), render_table(values, params)),
        chart_dir / "values.schema.json": schema,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chart", type=Path, default=CHART_DIR, help="chart directory")
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    args = parser.parse_args(argv)
    try:
        files = generated_files(args.chart)
    except DocsError as error:
        print(f"gen_docs: {error}", file=sys.stderr)
        return 1
    stale = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"gen_docs: {path} is stale; run python k8s/gen_docs.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(files[path])
        print(f"gen_docs: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

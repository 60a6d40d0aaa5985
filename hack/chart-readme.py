#!/usr/bin/env python3
"""The values table of charts/datastorage-operator/README.md, generated from values.schema.json (descriptions,
types) and values.yaml (defaults), between the README's `<!-- values:start -->` and `<!-- values:end -->` markers;
the text around them is hand-written.

    hack/chart-readme.py           rewrite the README (make chart-files runs it)
    hack/chart-readme.py --check   exit 1 when the README is not what the schema and values give (tests/it/helm.rs)

A key without a description is an error: every value is documented where helm lint reads it.
"""
import json
import pathlib
import sys

try:
    import yaml
except ImportError:
    sys.exit("hack/chart-readme.py needs PyYAML: apt-get install python3-yaml (or pip install pyyaml)")

CHART = pathlib.Path(__file__).resolve().parent.parent / "charts" / "datastorage-operator"
START, END = "<!-- values:start -->", "<!-- values:end -->"


def kind(node):
    if "$ref" in node:
        return {"port": "integer (port)", "stringMap": "map of strings", "peers": "list of peers"}[
            node["$ref"].rsplit("/", 1)[1]
        ]
    if "oneOf" in node:
        return " or ".join(kind(n) for n in node["oneOf"])
    t = node.get("type", "any")
    t = " or ".join(t) if isinstance(t, list) else t
    if "enum" in node and t == "string":
        t = " \\| ".join(f"`{e}`" for e in node["enum"] if e != "") or t
    return t


def rows(props, values, prefix, missing):
    for key, node in props.items():
        path = f"{prefix}{key}"
        desc = node.get("description", "").strip()
        if not desc:
            missing.append(path)
        value = values.get(key) if isinstance(values, dict) else None
        children = node.get("properties")
        if children:
            yield path, "object", "", desc
            yield from rows(children, value or {}, f"{path}.", missing)
        else:
            shown = "" if key not in (values or {}) else f"`{json.dumps(value)}`"
            yield path, kind(node), shown, desc


def table():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = []
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for path, t, default, desc in rows(schema["properties"], values, "", missing):
        cells = [f"`{path}`", t, default, desc]
        lines.append("| " + " | ".join(c.replace("|", "\\|") if c is not t else c for c in cells) + " |")
    if missing:
        sys.exit("values.schema.json: no description for " + ", ".join(missing))
    return "\n".join(lines)


def main():
    readme = CHART / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        sys.exit(f"{readme}: the markers {START} / {END} are missing")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    want = f"{head}{START}\n{table()}\n{END}{tail}"
    if "--check" in sys.argv[1:]:
        if want != text:
            sys.exit(f"{readme} is out of date: run hack/chart-readme.py (or make chart-files)")
        return
    readme.write_text(want)


if __name__ == "__main__":
    main()

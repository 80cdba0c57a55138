"""MkDocs hooks (mkdocs.yml `hooks:`): the reference pages, written from the code at build time.

A page asks for a generated part with a marker on a line of its own; the marker is
replaced by what the code says now, so the site cannot drift from it:

- `<!-- settings:start -->` ... `<!-- settings:end -->`: every setting (lobby.config's
  own table, `config.replace_table`, the one `lobbyd --help` is made from);
- `<!-- gen:openapi -->`: every path, method, parameter and response of the app's
  OpenAPI document (the one lobbyd serves at /openapi.json);
- `<!-- gen:lobbyctl -->`: lobbyctl's usage and commands (lobby.ctl);
- `<!-- gen:metrics -->`: every metric family of a fresh daemon's /metrics registry;
- `<!-- gen:bench -->`: bench/README.md, its plots copied beside the page.

Kept thin on purpose: everything comes from public names (`lobby.config`, `lobby.ctl`,
`lobby.ops.metrics`, `lobby.api.dispatch.Api`, `lobby.daemon.Daemon`).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the generators need no MkDocs (tests/unit/test_config.py imports this)
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import Files
    from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
BENCH_PAGE = "benchmarks.md"
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)/]+\.(?:png|svg))\)")


def cell(text: object) -> str:
    """A markdown table cell: pipes escaped, newlines folded."""
    return " ".join(str(text).split()).replace("|", "\\|")


# -- settings -----------------------------------------------------------------------------


def settings_table(markdown: str) -> str:
    from lobby import config

    if f"\n{config.README_START}\n" not in f"\n{markdown}":  # on a line of its own
        return markdown
    return config.replace_table(markdown)


# -- HTTP API -----------------------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    """/openapi.json of a daemon built from default settings (with a token, so the
    document tells which routes need one), asked of its route table the way a request
    from a client is answered (`Api.respond`), without a socket."""
    import asyncio
    import json

    from lobby import config
    from lobby.api.dispatch import Api
    from lobby.api.http import Request
    from lobby.daemon import Daemon

    async def fetch(labels: str) -> dict[str, Any]:
        settings = config.load({"HOSTNAME": "docs.example", "LABELS_PATH": labels})
        daemon = Daemon(settings)
        api = Api(daemon, "s3cret", daemon.feed, metrics=daemon.metrics)
        headers = [(b"authorization", b"Token s3cret")]
        answer = await api.respond(Request("GET", "/openapi.json", headers=headers))
        assert answer.status == 200, answer.status
        assert isinstance(answer.body, bytes)
        document: dict[str, Any] = json.loads(answer.body)
        return document

    with tempfile.TemporaryDirectory() as labels:
        return asyncio.run(fetch(labels))


def _schema_name(schema: dict[str, Any] | None) -> str:
    if not schema:
        return ""
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if schema.get("type") == "array":
        return f"array of {_schema_name(schema.get('items')) or 'any'}"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_schema_name(s) for s in schema[key])
    return str(schema.get("type", "object"))


def openapi_markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"Generated from the OpenAPI document of lobbyd {doc['info']['version']} "
        "(`GET /openapi.json`).",
        "",
    ]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            lines += [f"### `{method.upper()} {path}`", "", op.get("summary", ""), ""]
            if op.get("description"):
                lines += [op["description"], ""]
            if op.get("security") == []:
                lines += ["Needs no token.", ""]
            params = op.get("parameters", [])
            if params:
                lines += [
                    "| parameter | in | type | required | description |",
                    "| --- | --- | --- | --- | --- |",
                ]
                for p in params:
                    lines.append(
                        f"| `{p['name']}` | {p['in']} | {cell(_schema_name(p.get('schema')))} "
                        f"| {'yes' if p.get('required') else 'no'} "
                        f"| {cell(p.get('description', ''))} |"
                    )
                lines.append("")
            body = op.get("requestBody")
            if body:
                kinds = ", ".join(f"`{k}`" for k in body.get("content", {}))
                lines += [f"Request body ({kinds}): {body.get('description', '')}", ""]
            lines += ["| status | description | content |", "| --- | --- | --- |"]
            for status, resp in op.get("responses", {}).items():
                content = resp.get("content") or {}
                shown = "; ".join(
                    f"`{kind}` {_schema_name(media.get('schema'))}".strip()
                    for kind, media in content.items()
                )
                lines.append(f"| {status} | {cell(resp.get('description', ''))} | {cell(shown)} |")
            lines.append("")
    schemas = doc.get("components", {}).get("schemas", {})
    if schemas:
        lines += ["## Schemas", ""]
        for name, schema in schemas.items():
            lines += [f"### {name}", "", schema.get("description", ""), ""]
            props = schema.get("properties", {})
            if props:
                required = set(schema.get("required", []))
                lines += ["| field | type | required | description |", "| --- | --- | --- | --- |"]
                for field, spec in props.items():
                    lines.append(
                        f"| `{field}` | {cell(_schema_name(spec))} "
                        f"| {'yes' if field in required else 'no'} "
                        f"| {cell(spec.get('description', spec.get('title', '')))} |"
                    )
                lines.append("")
    return "\n".join(lines)


# -- lobbyctl -----------------------------------------------------------------------------


def lobbyctl_markdown() -> str:
    from lobby import ctl

    usage = ctl.USAGE.split("Commands:", 1)[1].split("\n\n", 1)[0]
    lines_of_usage = [line.strip().split("  ", 1) for line in usage.strip().splitlines()]
    described = [(left.split(), text.strip()) for left, text in lines_of_usage]

    def what(words: tuple[str, ...]) -> str:
        exact = [text for left, text in described if left[: len(words)] == list(words)]
        first = [text for left, text in described if left[:1] == list(words[:1])]
        return (exact or first or [""])[0]

    lines = ["```text", ctl.USAGE.rstrip(), "```", "", "| command | arguments | what |"]
    lines.append("| --- | --- | --- |")
    for words, (_action, count, metavar) in ctl.COMMANDS.items():
        args = {0: "", 1: metavar}.get(count, f"{metavar}...")
        lines.append(f"| `lobbyctl {' '.join(words)}` | {cell(args)} | {cell(what(words))} |")
    return "\n".join(lines)


def lobbyctl_output_markdown() -> str:
    """What lobbyctl prints, from lobby.ctl's docstring: its list items, each with its
    literal block (`::`, indented) as a fenced block inside the item."""
    import textwrap

    from lobby import ctl

    doc = ctl.__doc__ or ""
    lines = doc[doc.index("Human output") : doc.index("Start-up stays fast")].splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("  ") and not line.startswith("   "):
            line = "  " + line  # a list item's own text, also after its literal block
        if line.startswith("- ") and out and out[-1].strip():
            out.append("")  # a new item, never a lazy continuation of the last one
        if not line.endswith("::"):
            out.append(line)
            continue
        out.append(line[:-1])  # "...::" -> "...:"
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("      ")):
            block.append(lines[i])
            i += 1
        literal = textwrap.dedent("\n".join(block)).strip("\n").replace("\\\\", "\\")
        out += ["", "    ```text", textwrap.indent(literal, "    "), "    ```", ""]
    return "\n".join(out).strip()


# -- metrics ------------------------------------------------------------------------------


class _Link:
    """One broker link with nothing counted yet (lobby.metrics.LinkCounts)."""

    name = "NATS"
    received = announcements = send_failures = dropped = reconnects = 0
    healthy = True


def metric_families() -> Iterator[tuple[str, str, str, list[str]]]:
    """(name as scraped, type, help, label names) of every family a daemon exposes."""
    from lobby import __version__
    from lobby.ops.metrics import Metrics

    metrics = Metrics(__version__)
    metrics.track(
        nodes=lambda: 0,
        index=lambda: 0,
        paused=lambda: 0,
        links=lambda: [_Link()],
        rejected=lambda: {"not_json": 0},
        streams=lambda: 0,
        blocking=lambda: 0,
    )
    metrics.http_request("/v1/resolve", 200, 0.001)  # so that its families show their labels
    for family in metrics.registry.collect():
        labels = sorted({k for s in family.samples for k in s.labels if k != "le"})
        name = family.name + ("_total" if family.type == "counter" else "")
        yield name, family.type, family.documentation, labels


def metrics_markdown() -> str:
    lines = ["| metric | type | labels | help |", "| --- | --- | --- | --- |"]
    for name, kind, doc, labels in metric_families():
        shown = ", ".join(f"`{label}`" for label in labels)
        lines.append(f"| `{name}` | {kind} | {shown} | {cell(doc)} |")
    return "\n".join(lines)


# -- benchmarks ---------------------------------------------------------------------------


def bench_markdown() -> str:
    text = (BENCH / "README.md").read_text(encoding="utf-8")
    body = text.partition("\n")[2]  # the page has its own title
    return _IMAGE.sub(lambda m: f"![{m.group(1)}](bench/{m.group(2)})", body)


def bench_images() -> list[str]:
    text = (BENCH / "README.md").read_text(encoding="utf-8")
    return sorted({m.group(2) for m in _IMAGE.finditer(text)})


# -- hooks --------------------------------------------------------------------------------

GENERATED = {
    "<!-- gen:openapi -->": lambda: openapi_markdown(openapi_document()),
    "<!-- gen:lobbyctl -->": lobbyctl_markdown,
    "<!-- gen:lobbyctl-output -->": lobbyctl_output_markdown,
    "<!-- gen:metrics -->": metrics_markdown,
    "<!-- gen:bench -->": bench_markdown,
}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """The plots of bench/README.md, beside the benchmarks page."""
    from mkdocs.structure.files import File

    for name in bench_images():
        files.append(File.generated(config, f"bench/{name}", abs_src_path=str(BENCH / name)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    markdown = settings_table(markdown)
    for marker, make in GENERATED.items():
        own_line = re.compile(rf"^{re.escape(marker)}$", re.M)  # not one quoted in the text
        if own_line.search(markdown):
            parts = own_line.split(markdown)
            markdown = make().join(parts)
    return markdown


if __name__ == "__main__":  # a look at the API document: python docs/_gen/hooks.py
    print(json.dumps(openapi_document(), indent=2))

"""The ``/docs`` page: an OpenAPI document rendered as one self-contained HTML page.

No scripts and no external assets, so the page works offline and behind any content policy.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from shared.openapi import Schema

_METHODS = ("get", "head", "post", "put", "patch", "delete", "options", "trace")
_CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1b1f24;background:#fff}
main{max-width:60rem;margin:0 auto;padding:1rem 1.5rem 4rem}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #d0d7de;padding-bottom:.2rem;margin-top:2.5rem}
h3{font-size:1.05rem;margin:0}
nav ul{columns:2;padding-left:1.2rem}
code{font:13px/1.4 ui-monospace,monospace;background:#f3f4f6;padding:0 .2rem;border-radius:3px}
.op{border:1px solid #d0d7de;border-radius:6px;padding:.8rem 1rem;margin:1rem 0}
.method{display:inline-block;min-width:4.2rem;text-align:center;font:600 12px/1.8 monospace;
color:#fff;border-radius:4px;margin-right:.5rem}
.get{background:#0969da}.post{background:#1a7f37}.patch{background:#9a6700}
.delete{background:#cf222e}.put{background:#8250df}
.meta{color:#57606a;font-size:13px}
table{border-collapse:collapse;width:100%;margin:.4rem 0}
th,td{text-align:left;vertical-align:top;border-bottom:1px solid #eaeef2;padding:.25rem .4rem;
overflow-wrap:anywhere}
td:first-child,td:nth-child(2):not(:last-child){white-space:nowrap;overflow-wrap:normal}
th{font-size:13px;color:#57606a}
ul.props{list-style:none;padding-left:1rem;margin:.2rem 0;border-left:2px solid #eaeef2}
"""


def render_html(spec: dict[str, Any]) -> str:
    """The whole document as one page: operations by tag, then the shared schemas."""
    info = spec["info"]
    by_tag = _operations_by_tag(spec)
    tag_text = {tag["name"]: tag.get("description", "") for tag in spec.get("tags", [])}
    nav = "".join(
        f'<li><a href="#tag-{_slug(tag)}">{_e(tag)}</a> ({len(ops)})</li>'
        for tag, ops in by_tag.items()
    )
    sections = "".join(
        f'<section id="tag-{_slug(tag)}"><h2>{_e(tag)}</h2>{_text(tag_text.get(tag, ""))}'
        + "".join(_render_operation(spec, method, path, op) for method, path, op in ops)
        + "</section>"
        for tag, ops in by_tag.items()
    )
    components = spec.get("components", {})
    schemes = "".join(
        f"<tr><td><code>{_e(name)}</code></td><td>{_text(scheme.get('description', ''))}</td></tr>"
        for name, scheme in components.get("securitySchemes", {}).items()
    )
    schemas = "".join(
        f'<div class="op" id="schema-{_e(name)}"><h3><code>{_e(name)}</code></h3>'
        f"{_render_schema(schema)}</div>"
        for name, schema in components.get("schemas", {}).items()
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(info['title'])}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{_e(info['title'])}</h1><p class=meta>version {_e(info['version'])} · "
        f'OpenAPI {_e(spec["openapi"])} · <a href="openapi.json">openapi.json</a></p>'
        f"{_text(info.get('description', ''))}<nav><ul>{nav}"
        '<li><a href="#security">Authentication</a></li><li><a href="#schemas">Schemas</a></li>'
        f"</ul></nav>{sections}"
        f'<section id="security"><h2>Authentication</h2><table>{schemes}</table></section>'
        f'<section id="schemas"><h2>Schemas</h2>{schemas}</section>'
        "</main></body></html>"
    )


def _operations_by_tag(spec: dict[str, Any]) -> dict[str, list[tuple[str, str, dict]]]:
    by_tag: dict[str, list[tuple[str, str, dict]]] = {
        tag["name"]: [] for tag in spec.get("tags", [])
    }
    for path, item in spec["paths"].items():
        for method in _METHODS:
            if method in item:
                # Parameters of the path belong to each of its operations.
                shared = item.get("parameters", [])
                op = {**item[method], "parameters": [*shared, *item[method].get("parameters", [])]}
                for tag in op.get("tags") or ["Other"]:
                    by_tag.setdefault(tag, []).append((method, path, op))
    return {tag: ops for tag, ops in by_tag.items() if ops}


def _render_operation(spec: dict[str, Any], method: str, path: str, op: dict[str, Any]) -> str:
    security = ", ".join(name for need in op.get("security", []) for name in need)
    parts = [
        f'<article class="op" id="op-{_e(op["operationId"])}">'
        f'<h3><span class="method {method}">{method.upper()}</span><code>{_e(path)}</code> '
        f"{_e(op.get('summary', ''))}</h3>"
        f"<p class=meta>operationId <code>{_e(op['operationId'])}</code> · "
        f"{_e(security) or 'no credentials'}"
    ]
    if permissions := op.get("x-permissions"):
        parts.append(f" · permission: {_e(' or '.join(permissions))}")
    parts.append(f"</p>{_text(op.get('description', ''))}")
    if params := op.get("parameters"):
        rows = "".join(
            f"<tr><td><code>{_e(p['name'])}</code>{' *' if p.get('required') else ''}</td>"
            f"<td>{_e(p['in'])}</td><td>{_type_label(p.get('schema', {}))}</td>"
            f"<td>{_text(p.get('description', ''))}</td></tr>"
            for p in params
        )
        parts.append(
            "<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th>"
            f"<th>description</th></tr>{rows}</table>"
        )
    if body := op.get("requestBody"):
        parts.append(f"<h4>Request body</h4>{_text(body.get('description', ''))}")
        parts.append(_render_content(body.get("content", {})))
    rows = "".join(
        f"<tr><td><code>{_e(status)}</code></td><td>{_render_response(spec, answer)}</td></tr>"
        for status, answer in op.get("responses", {}).items()
    )
    parts.append(
        f"<h4>Responses</h4><table><tr><th>status</th><th>answer</th></tr>{rows}</table></article>"
    )
    return "".join(parts)


def _render_response(spec: dict[str, Any], answer: dict[str, Any]) -> str:
    resolved = _resolve(spec, answer)
    description = answer.get("description", resolved.get("description", ""))
    headers = ", ".join(f"<code>{_e(name)}</code>" for name in resolved.get("headers", {}))
    return (
        _text(description)
        + (f"<p class=meta>headers: {headers}</p>" if headers else "")
        + _render_content(resolved.get("content", {}))
    )


def _render_content(media: dict[str, Any]) -> str:
    return "".join(
        f"<div><code>{_e(media_type)}</code> {_render_schema(item.get('schema', {}))}</div>"
        for media_type, item in media.items()
    )


def _render_schema(schema: Schema, depth: int = 0) -> str:
    """A type label, then (for objects, arrays of objects) the members as a nested list."""
    label = _type_label(schema)
    description = f" — {_inline(schema['description'])}" if schema.get("description") else ""
    members = _members(schema)
    if not members or depth > 6:
        return f"{label}{description}"
    required = set(schema.get("required", []))
    items = "".join(
        f"<li><code>{_e(name)}</code>{' *' if name in required else ''}: "
        f"{_render_schema(member, depth + 1)}</li>"
        for name, member in members.items()
    )
    return f'{label}{description}<ul class="props">{items}</ul>'


def _members(schema: Schema) -> dict[str, Schema]:
    if "properties" in schema:
        return schema["properties"]
    if schema.get("type") == "array" and "properties" in schema.get("items", {}):
        return schema["items"]["properties"]
    variants = schema.get("oneOf") or schema.get("anyOf") or []
    if len(variants) > 1 and all("properties" in v for v in variants):
        merged: dict[str, Schema] = {}
        for variant in variants:
            merged.update(variant["properties"])
        return merged
    return {}


def _type_label(schema: Schema) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{_e(name)}"><code>{_e(name)}</code></a>'
    if "const" in schema:
        return f"<code>{_e(json.dumps(schema['const']))}</code>"
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{_e(json.dumps(v))}</code>" for v in schema["enum"])
    for combinator, joiner in (("oneOf", " or "), ("anyOf", " or "), ("allOf", " and ")):
        if combinator in schema and "properties" not in schema:
            labels = [_type_label(variant) for variant in schema[combinator]]
            return joiner.join(label for label in labels if label) or "object"
    kind = schema.get("type", "")
    kinds = kind if isinstance(kind, list) else [kind]
    labels = []
    for name in kinds:
        if name == "array":
            labels.append(f"array of {_type_label(schema.get('items', {}))}")
        elif name:
            fmt = schema.get("format")
            labels.append(f"{_e(name)} ({_e(fmt)})" if fmt else _e(name))
    bounds = [
        f"{_e(key)} {_e(str(schema[key]))}"
        for key in ("minimum", "maximum", "minLength", "maxLength", "maxItems", "pattern")
        if key in schema
    ]
    label = " | ".join(labels)
    return f"{label} <span class=meta>[{', '.join(bounds)}]</span>" if bounds else label


def _resolve(spec: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    pointer = item.get("$ref")
    if not isinstance(pointer, str) or not pointer.startswith("#/"):
        return item
    target: Any = spec
    for part in pointer[2:].split("/"):
        target = target[part]
    return target


_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    """Escape, then show `backticked` words as code (the only markup descriptions use)."""
    return _CODE.sub(r"<code>\1</code>", _e(text))


def _text(text: str) -> str:
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    return "".join(f"<p>{_inline(p)}</p>" for p in paragraphs)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _slug(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")

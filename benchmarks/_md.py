"""A generated block inside a hand-written Markdown page: the benchmarks rewrite their own tables
in docs/distill_results.md and leave the prose around them alone."""
from __future__ import annotations

import os
from pathlib import Path


def replace_block(path: Path, name: str, body: str) -> None:
    """Put ``body`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path`` (appended,
    with its markers, when the page has none), writing the page atomically."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.is_file() else ""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def block_head(path: Path, name: str) -> str | None:
    """The first paragraph of the block ``name`` in ``path`` (where its numbers came from), or None
    when the page has no such block."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.is_file() else ""
    if begin not in text or end not in text:
        return None
    body = text.split(begin, 1)[1].split(end, 1)[0].strip()
    return body.split("\n\n", 1)[0] if body else None

"""MkDocs hook: the command-line reference, generated from fitvision's own parser at build time.

cli.md holds the marker line ``<!-- cli-reference -->``; the hook puts there, for every command,
its ``--help`` text as the parser prints it, so the page cannot drift from the code.
"""

from __future__ import annotations

import os

MARKER = "<!-- cli-reference -->"


def _help(command: str) -> str:
    from fitvision.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the page the same everywhere
    parser = build_parser(command)
    if not command:
        return parser.format_help()
    sub = next(a for a in parser._subparsers._group_actions if hasattr(a, "choices"))  # noqa: SLF001
    return sub.choices[command].format_help()


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    from fitvision.cli import COMMANDS

    parts = ["## fitvision\n\n```text\n" + _help("").rstrip() + "\n```\n"]
    for command in COMMANDS:
        parts.append(f"## fitvision {command}\n\n```text\n" + _help(command).rstrip() + "\n```\n")
    return markdown.replace(MARKER, "\n".join(parts))

"""MkDocs hooks (mkdocs.yml ``hooks:``): the pages that are generated at build time.

* ``cli.md``: the output of ``ntk-ngd --help`` and of ``ntk-ngd COMMAND --help`` for every
  subcommand, taken from the parser itself (``ntk_ngd.cli.build_parser``), never copied by hand;
* the tutorials: ``scripts/run_tutorials.py`` executes every tutorial whose page is missing or
  stale (source or package changed) before the files are collected.

``NTK_NGD_DOCS_SKIP_TUTORIALS=1`` skips the execution (a page that was never rendered then fails a
strict build through the navigation).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent

HELP_COLUMNS = "100"


def _help(parser: argparse.ArgumentParser) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        parser.print_help()
    return buf.getvalue().rstrip()


def cli_reference() -> str:
    """Markdown: the top-level help and every subcommand's help, as the parser prints them."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS  # argparse wraps to the terminal width: fix it
    try:
        from ntk_ngd.cli import build_parser
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parts = ["# CLI reference", "",
                 "Generated at documentation build time from `ntk_ngd.cli.build_parser()`: every "
                 "section is exactly what `--help` prints for the installed version. The columns "
                 "that the commands print are explained in the [glossary](glossary.md).", "",
                 "## `ntk-ngd`", "", "```text", _help(parser), "```"]
        for name, p in sub.choices.items():
            parts += ["", f"## `ntk-ngd {name}`", "", "```text", _help(p), "```"]
        return "\n".join(parts) + "\n"
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def on_pre_build(config, **kwargs):
    if os.environ.get("NTK_NGD_DOCS_SKIP_TUTORIALS"):
        return
    spec = importlib.util.spec_from_file_location("run_tutorials", ROOT / "scripts" / "run_tutorials.py")
    run_tutorials = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_tutorials)
    run_tutorials.ensure(log=lambda msg: print(f"INFO    -  tutorials: {msg}", flush=True))


def on_files(files, config, **kwargs):
    files.append(File.generated(config, "cli.md", content=cli_reference()))
    return files

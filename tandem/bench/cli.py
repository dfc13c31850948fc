"""Arguments and entry point of ``tandem bench`` (being written)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("tandem bench is not implemented yet")

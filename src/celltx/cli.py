"""Command-line interface: ``celltx quickstart``, ``embed``, ``pretrain`` and ``finetune``.

Each verb lives in a file of its own (``_cli_quickstart``, ``_cli_embed``, ``_cli_train``,
``_cli_finetune``; output and input checks in ``_cli_io``); this module builds the parser,
dispatches, and is where the verbs' Python functions are imported from
(``from celltx.cli import embed``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from celltx import _cli_embed, _cli_finetune, _cli_quickstart, _cli_train
from celltx._cli_embed import (
    CELLTX_FILES,
    DEVICES,
    EMBED_SUFFIXES,
    SCGPT_FILES,
    EmbedError,
    checkpoint_kind,
    embed,
)
from celltx._cli_quickstart import (
    QUICKSTART_FILES,
    QUIET_LOG_MESSAGES,
    quickstart,
    quiet_third_party,
)

logger = logging.getLogger("celltx")

#: the sub-commands and the module that defines each (``add_parser`` and ``run``)
_VERBS = {
    "quickstart": _cli_quickstart,
    "embed": _cli_embed,
    "pretrain": _cli_train,
    "finetune": _cli_finetune,
}

__all__ = [
    "CELLTX_FILES",
    "DEVICES",
    "EMBED_SUFFIXES",
    "QUICKSTART_FILES",
    "QUIET_LOG_MESSAGES",
    "SCGPT_FILES",
    "EmbedError",
    "checkpoint_kind",
    "embed",
    "main",
    "quickstart",
    "quiet_third_party",
]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``celltx`` command line (``celltx --help``).

    Parameters
    ----------
    argv
        Command-line arguments without the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    int
        The exit status.
    """
    parser = argparse.ArgumentParser(prog="celltx", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    parsers = {verb: module.add_parser(sub) for verb, module in _VERBS.items()}
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _VERBS[args.command].run(args, parsers[args.command])
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Sub-commands whose modules are imported only when they are the one being run.

``creward --help`` lists every command from a table (name, module, one-line help) without
importing any of them; only the chosen command's module is imported and builds its full
parser. So help, ``--version`` and usage errors never wait for torch, and one command's heavy
imports never slow another down.

A command module exposes ``register(subparsers)``, which adds the parser ``name`` and sets
``func`` (called with the parsed namespace, returns the exit status). A group of commands
(``train``) exposes ``register(subparsers, words)`` and hands ``words`` on to its own
:func:`add_commands`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Command:
    name: str
    module: str  # absolute module name, e.g. "creward.cli.score"
    help: str  # the line shown in the parent's --help
    group: bool = False  # register(subparsers, words): a command with sub-commands of its own


def command_words(argv: Sequence[str]) -> list[str]:
    """The words of ``argv`` that are not options: ``["train", "fit", "pairs/"]``.

    Only the first one or two matter (command, then sub-command); they are found this way
    because no option before a command takes a value.
    """
    return [word for word in argv if not word.startswith("-")]


def add_commands(subparsers, commands: Sequence[Command], words: Sequence[str]) -> None:
    """Add ``commands`` to ``subparsers``; ``words[0]`` names the one to build in full.

    The chosen command's parser is recorded as ``command_parser`` in the parsed namespace, so
    ``cli.main`` can answer a :class:`~creward.cli.arguments.UsageError` with that command's
    usage. Every other command gets a placeholder parser that only carries its help line.
    """
    chosen = words[0] if words else None
    for command in commands:
        if command.name != chosen:
            subparsers.add_parser(command.name, help=command.help, description=command.help)
            continue
        module = importlib.import_module(command.module)
        if command.group:
            module.register(subparsers, list(words[1:]))
        else:
            module.register(subparsers)
        parser = subparsers.choices[command.name]
        parser.set_defaults(command_parser=parser)

"""The CLI's command tree, walked: every (sub)command path of so8t's argparse parser."""

import argparse


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """Yield ('data',), ('data', 'validate'), ... for every subcommand, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from subcommands(sub, prefix + (name,))

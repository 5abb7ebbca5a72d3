"""The one way commands parse their flags: no abbreviations (`--learning_rat` is not `--learning_rate`), and every
parse error, unknown flag or YAML key, unreadable `--config` file or out-of-range value raised as a ConfigError,
which `avalign` prints as one line and exit code 2."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser without abbreviations whose errors are ConfigErrors (one line, exit 2, no usage dump)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        message = message.replace("\n", "\\n")  # a value with a newline must not break the line
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def at_least(minimum: float, kind=int):
    """An argparse type: a number of ``kind`` that is >= ``minimum``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def dataclass_parser(dataclass_types, prog: str):
    """A TrlParser (HfArgumentParser with `--config file.yaml`) over ``dataclass_types`` with the manners above."""
    from trl import TrlParser

    class Parser(ArgumentParser, TrlParser):
        pass

    return Parser(dataclass_types, prog=prog)


def parse_dataclasses(parser, argv: list[str]) -> tuple:
    """``parser.parse_args_and_config(argv)`` (see ``dataclass_parser``) with its failures as ConfigErrors that name
    the flag, key or file."""
    import yaml

    try:
        *parsed, from_config, from_flags = parser.parse_args_and_config(
            list(argv), return_remaining_strings=True, separate_remaining_strings=True
        )
    except ConfigError:
        raise
    except IndexError:  # `--config` last, without its file
        raise ConfigError("--config needs a YAML file: --config FILE.yaml") from None
    except OSError as error:  # --config names a missing or unreadable file
        raise ConfigError(f"--config {error.filename}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"--config: not valid YAML: {' '.join(str(error).split())}") from None
    except (ValueError, TypeError) as error:  # a value the dataclasses refuse (TrainingArguments' own checks)
        raise ConfigError(" ".join(str(error).split())) from None
    if from_config:
        keys = [item[2:] for item in from_config[0::2]]
        raise ConfigError(f"--config: unknown key(s) {keys} (see `{parser.prog} --help` for the options)")
    if from_flags:
        raise ConfigError(f"unrecognized arguments: {from_flags} (see `{parser.prog} --help`)")
    return tuple(parsed)

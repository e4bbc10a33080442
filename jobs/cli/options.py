"""Command-line options that come from the config schemas, so a flag's default and help are the field's.

``option(ServeConfig, "port")`` is a Typer option whose default and ``--help`` text are those of the
schema's field; the command then builds its config with :func:`load` (the one loader of
:mod:`jobs.config`), so the flag's value is checked by the same schema and a bad one is a usage error
(exit code 2) that names the field — as is an error a job raises inside :func:`usage_errors`.
:func:`renamed_flag` keeps an old flag spelling working, with a deprecation warning, for one release.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer

from jobs.config import Section, load_config, warn_renamed
from jobs.sections import TrackingSection

S = TypeVar("S", bound=Section)

SET = typer.Option([], "--set", help="Override a config value: --set optim.lr=3e-4 (repeatable).")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Show everything Ray, MLflow and transformers print, as it "
                       "happens, instead of one line per stage and a log file (also: VISOR_LOG_LEVEL=debug).")


def option(schema: type[Section], name: str, *flags: str, **typer_kwargs: Any) -> Any:
    """A Typer option for field ``name`` of ``schema``: default and help from the field (required if it has
    no default)."""
    field = schema.model_fields[name]
    default = ... if field.is_required() else field.get_default(call_default_factory=True)
    return typer.Option(default, *flags, help=field.description, **typer_kwargs)


TRACKING_URI = option(TrackingSection, "tracking_uri")


def renamed_flag(old: str, new: str) -> Any:
    """A hidden option for the old spelling ``old`` of flag ``new``: still accepted, with a deprecation warning."""
    def warn(value: Any) -> Any:
        if value is not None:
            warn_renamed(old, new)
        return value

    return typer.Option(None, old, hidden=True, callback=warn)


INPUT_ERRORS = (ValueError, OSError)  # what a job raises for data it cannot find or read


@contextmanager
def usage_errors(param_hint: str | None = None,
                 errors: tuple[type[Exception], ...] = (ValueError,)) -> Iterator[None]:
    """Turn ``errors`` (by default a ``ValueError``, a bad config included) raised inside into a usage error
    (exit code 2) with their message, attributed to ``param_hint``."""
    try:
        yield
    except errors as err:
        raise typer.BadParameter(str(err), param_hint=param_hint) from err


def load(schema: type[S], source: str | Path | Mapping[str, Any] | None = None, overrides: Iterable[str] = (),
         param_hint: str | None = None) -> S:
    """:func:`jobs.config.load_config`, with a bad config turned into a usage error naming the field."""
    with usage_errors(param_hint):
        return load_config(schema, source, overrides)

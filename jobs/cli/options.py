"""Command lines made from the config schemas, so a flag's name, default and help are the field's.

Every job's command is made by :func:`job_command` from a :class:`JobCommand`: ``--config FILE|PRESET``,
``--set key.sub=value`` (repeatable) and one flag per common field (``"score.batch_size"`` is
``--batch-size``), named after the field, its help the field's description and its default shown from the
field — a flag that is not given leaves the config's value alone. The config is resolved in that order
(file, flags, ``--set``) by the one loader of :mod:`jobs.config`, so a bad value is a usage error (exit code
2) that names the field — as is an error a job raises inside :func:`usage_errors`. :data:`JOBS` holds every
job's :class:`JobCommand`, so ``visor submit JOB`` resolves a config exactly as ``visor JOB`` does. An old
flag spelling keeps working for one release, with a deprecation warning (``JobCommand.renamed``).
``option(ServeConfig, "port")`` is a single Typer option of a field, for commands that are not jobs.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import typer
from pydantic.fields import FieldInfo

from jobs.config import CONFIG_DIR, Section, load_config, warn_renamed
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
         param_hint: str | None = None, values: Mapping[str, Any] | None = None) -> S:
    """:func:`jobs.config.load_config`, with a bad config turned into a usage error naming the field."""
    with usage_errors(param_hint):
        return load_config(schema, source, overrides, values)


def field_at(schema: type[Section], dotted: str) -> FieldInfo:
    """The field ``key.sub`` of ``schema`` (through its sub-sections)."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        schema = schema.model_fields[part].annotation
    return schema.model_fields[leaf]


def flag_type(annotation: Any) -> Any:
    """The Typer type of a flag for a field of type ``annotation``: ``X | None`` as X, a ``Literal`` as the type
    of its values, a list as a repeatable option, a mapping as repeatable ``KEY=VALUE`` items."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = (a for a in get_args(annotation) if a is not type(None))
    origin = get_origin(annotation)
    if origin is Literal:
        return type(get_args(annotation)[0])
    if origin is list:
        return list[flag_type(get_args(annotation)[0])]
    if origin is dict:
        return list[str]
    return annotation


def flag_name(dotted: str) -> str:
    return "--" + dotted.rpartition(".")[2].replace("_", "-")


def param_name(dotted: str) -> str:
    return dotted.rpartition(".")[2]


def given(value: Any) -> bool:
    """Whether a flag was given (an unset flag is None, an unset repeatable one empty)."""
    return value is not None and value != [] and value != ()


@dataclass(frozen=True)
class JobCommand:
    """How a job's command line maps onto its schema: ``flags`` and ``arguments`` (positional) are dotted fields;
    ``renamed`` maps an old flag spelling to the dotted field it now sets."""

    schema: type[Section]
    flags: tuple[str, ...] = ()
    arguments: tuple[str, ...] = ()
    renamed: Mapping[str, str] = field(default_factory=dict)
    words: tuple[str, ...] = ()  # the command's words after `visor` (``("data", "pack")``), set when registered

    def parameters(self) -> list[inspect.Parameter]:
        """``--config``, ``--set``, then one Typer parameter per argument, flag and old flag spelling."""
        presets = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        params = [
            _param("config", str | None, typer.Option(None, "--config", help=f"A config file, or a preset: "
                                                         f"{presets}.")),
            _param("set_", list[str], SET),
        ]
        for dotted in (*self.arguments, *self.flags):
            info = field_at(self.schema, dotted)
            kind = list[str] if dotted in self.arguments else flag_type(info.annotation) | None
            default = None if info.is_required() else info.get_default(call_default_factory=True)
            shown = "required unless the config sets it" if info.is_required() else str(default)
            if dotted in self.arguments:
                made = typer.Argument(None, help=info.description, show_default=False)
            else:
                made = typer.Option(None, flag_name(dotted), help=info.description, show_default=shown)
            params.append(_param(param_name(dotted), kind, made))
        for old, dotted in self.renamed.items():
            kind = flag_type(field_at(self.schema, dotted).annotation) | None
            params.append(_param(_old_param(old), kind, typer.Option(None, old, hidden=True)))
        return params

    def resolve(self, params: Mapping[str, Any]) -> Section:
        """The job's config from its parsed command line: the ``--config`` source, the flags given, ``--set``."""
        values = {dotted: params[param_name(dotted)] for dotted in (*self.arguments, *self.flags)
                  if given(params.get(param_name(dotted)))}
        for old, dotted in self.renamed.items():
            if given(params.get(_old_param(old))):
                warn_renamed(old, flag_name(dotted))
                if dotted in values:
                    raise typer.BadParameter(f"give either {old} (deprecated) or {flag_name(dotted)}", param_hint=old)
                values[dotted] = params[_old_param(old)]
        return load(self.schema, params.get("config"), params.get("set_") or (), "--config/--set/flags", values)


JOBS: dict[str, JobCommand] = {}  # job name → its command (``visor submit`` resolves and runs it as registered)


def job_command(app: typer.Typer, name: str, spec: JobCommand,
                under: tuple[str, ...] = ()) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``body(config, **options)`` as command ``name`` of ``app`` (a sub-app reached by the words
    ``under``, e.g. ``("data",)``): its parameters are those of ``spec`` followed by ``body``'s own after the
    first (Typer options that are not settings: ``--verbose``, ``--json``); ``body`` gets the resolved config
    and those options."""
    def register(body: Callable[..., None]) -> Callable[..., None]:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in list(inspect.signature(body, eval_str=True).parameters.values())[1:]]
        made = spec.parameters()

        def command(**params: Any) -> None:
            body(spec.resolve(params), **{p.name: params[p.name] for p in own})

        command.__signature__ = inspect.Signature([*made, *own])  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in (*made, *own)}
        command.__doc__, command.__name__ = body.__doc__, body.__name__
        JOBS[name] = replace(spec, words=(*under, name))
        app.command(name)(command)
        return body

    return register


def _param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _old_param(old: str) -> str:
    return "deprecated_" + old.lstrip("-").replace("-", "_")

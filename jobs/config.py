"""The one way every job is configured: a pydantic schema built from :class:`Section` and one loader,
:func:`load_config`.

* A schema is a tree of :class:`Section` subclasses. Unknown keys are errors (``extra="forbid"``);
  every default is written once, in its field; a field's ``description`` is also the ``--help`` text
  of the command-line flag that sets it (see ``jobs.cli.options``).
* :func:`load_config` takes YAML from a file or a shipped preset (``jobs/configs/<name>.yaml``), or an
  already parsed mapping (a Serve application's ``args``), sets the values of command-line flags by their
  dotted field names, applies ``--set key.sub=value`` overrides (the value parsed as YAML) and validates it.
  A :class:`ConfigError` names the source and every bad field by its dotted name
  (``optim.lr: Input should be greater than 0``).
* A sub-config may be written in place, or by name (:attr:`Section.includable` schemas, e.g. a retrain's
  ``train: demo-recipe``): a file or preset, or a mapping whose ``config`` key names one and whose other keys
  are merged over it (:func:`merge`: sections key by key, lists replaced). ``--set train.optim.lr=…`` reaches
  into it either way.
* :func:`partial` makes the schema of a partial config (every field optional, only the keys given are kept
  and dumped): a recipe's stages are partial training configs merged over the recipe.
* Renaming a key: the section lists it in ``renamed`` (``{"old": "new"}``, the new name may be dotted
  to move the value into a sub-section). For one release the old name is still accepted, moved to the
  new one, with a :class:`ConfigDeprecationWarning`; giving both is an error.
* :func:`field_of` and :func:`default_of` let another schema declare the same setting (the infra values
  file, a section that takes a pipeline's defaults) without writing its default again.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_serializer, model_validator
from pydantic.fields import FieldInfo
from pydantic_core.core_schema import SerializerFunctionWrapHandler

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the source and the field(s)."""


class ConfigDeprecationWarning(FutureWarning):
    """A setting was given by a name that is still accepted for one release (FutureWarning: shown to users)."""


def warn_renamed(old: str, new: str, where: str = "") -> None:
    """Tell the user that ``old`` is now called ``new`` (``where``: the schema or command it belongs to)."""
    prefix = f"{where}: " if where else ""
    warnings.warn(f"{prefix}{old!r} is deprecated and will be removed in the next release; use {new!r}",
                  ConfigDeprecationWarning, stacklevel=3)


INCLUDE_KEY = "config"  # in an includable section's mapping: the file or preset its other keys are merged over


class Section(BaseModel):
    """Base of every config schema: unknown keys rejected, renamed keys accepted for one release; an
    ``includable`` schema may also be given by a file or preset name (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    renamed: ClassVar[Mapping[str, str]] = {}
    includable: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _accept_renamed(cls, data: Any) -> Any:
        if cls.includable:
            data = included(data)
        if not cls.renamed or not isinstance(data, Mapping):
            return data
        data = dict(data)
        for old, new in cls.renamed.items():
            if old not in data:
                continue
            warn_renamed(old, new, cls.__name__)
            value = data.pop(old)
            *parents, leaf = new.split(".")
            node = data
            for part in parents:
                child = node.get(part, {})
                if not isinstance(child, Mapping):
                    raise ValueError(f"{old!r} (deprecated) cannot move into {part!r}, which is not a mapping")
                node[part] = node = dict(child)
            if leaf in node:
                raise ValueError(f"both {old!r} (deprecated) and {new!r} are given; keep only {new!r}")
            node[leaf] = value
        return data


S = TypeVar("S", bound=Section)


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` merged over ``base``: mappings key by key (recursively), everything else replaced."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def read_yaml(name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    """The mapping of a YAML file or shipped preset, and where it came from (for messages)."""
    path = config_path(name_or_path)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data, str(path)


def included(data: Any) -> Any:
    """An includable section's value as a mapping: a file or preset name read, or a mapping whose ``config`` key
    names one merged over it; anything else unchanged."""
    if isinstance(data, str | Path):
        return read_yaml(data)[0]
    if isinstance(data, Mapping) and isinstance(data.get(INCLUDE_KEY), str | Path):
        rest = {key: value for key, value in data.items() if key != INCLUDE_KEY}
        return merge(read_yaml(data[INCLUDE_KEY])[0], rest)
    return data


def model_type(annotation: Any) -> type[BaseModel] | None:
    """The model a field of type ``annotation`` holds (``X`` or ``X | None``), else None."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next((a for a in get_args(annotation) if a is not type(None)), None)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def expand_included(schema: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a config of ``schema``) with every includable sub-section given by name read in place, so that
    dotted values and ``--set`` items can reach into it."""
    for key, field in schema.model_fields.items():
        sub = model_type(field.annotation)
        if sub is None or key not in data:
            continue
        try:
            if issubclass(sub, Section) and sub.includable:
                data[key] = included(data[key])
            if isinstance(data[key], dict):
                data[key] = expand_included(sub, dict(data[key]))
        except ConfigError as err:
            raise ConfigError(f"{key}: {err}") from err
    return data


class Partial(Section):
    """Base of the schemas :func:`partial` makes: only the fields given are set, and only they are dumped."""

    @model_serializer(mode="wrap")
    def _only_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if key in self.model_fields_set}


def partial(schema: type[BaseModel], exclude: Iterable[str] = (), model_name: str | None = None,
            **extra: Any) -> type[Partial]:
    """A schema of partial ``schema`` configs: the same fields (types, constraints, descriptions, path marks) less
    ``exclude``, each optional and unset by default, sub-sections partial in turn; ``extra`` adds fields first
    (``name=(str, Field(...))``); ``model_name``: the schema's name (default ``Partial<schema>``). A partial
    config is merged over a whole one (:func:`merge` of its dump), which the whole schema then validates."""
    excluded = set(exclude)
    fields: dict[str, Any] = dict(extra)
    for name, field in schema.model_fields.items():
        if name in excluded:
            continue
        sub = model_type(field.annotation)
        annotation = partial(sub) if sub is not None else field.annotation
        optional = annotation | None
        fields[name] = (Annotated[(optional, *field.metadata)] if field.metadata else optional,
                        Field(None, description=field.description))
    made = create_model(model_name or f"Partial{schema.__name__}", __base__=Partial,
                        __doc__=f"A partial :class:`{schema.__name__}`.", **fields)
    made.renamed = {old: new for old, new in getattr(schema, "renamed", {}).items()
                    if new.partition(".")[0] not in excluded}  # old names are accepted in a partial config too
    return made


class LocalPath:
    """Field metadata: the value (a string, a list of them, or a mapping's values) may name a local path or a SQLite
    store — what ``visor submit`` makes absolute and ``visor infra check`` looks for on mounted volumes
    (:func:`path_fields`). Declared as ``Annotated[str, LOCAL_PATH]``."""


LOCAL_PATH = LocalPath()


def path_fields(schema: type[BaseModel], data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict, str]]:
    """``(dotted name, holder, key)`` of every set :data:`LOCAL_PATH` field in ``data``, a config of ``schema``
    dumped to a mapping (or a partial one), so that ``holder[key]`` can be read or rewritten."""
    for key, field in schema.model_fields.items():
        value = data.get(key)
        if value is None:
            continue
        name = f"{prefix}{key}"
        sub = model_type(field.annotation)
        items = get_args(field.annotation) if get_origin(field.annotation) is list else ()
        if LOCAL_PATH in field.metadata:
            yield name, data, key
        elif isinstance(value, dict) and sub is not None:
            yield from path_fields(sub, value, f"{name}.")
        elif items and model_type(items[0]) is not None:
            for index, item in enumerate(value):
                yield from path_fields(items[0], item, f"{name}[{index}].")


def config_path(name_or_path: str | Path) -> Path:
    """A file path, or a shipped preset's YAML (``jobs/configs/<name>.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = CONFIG_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {str(name_or_path)!r} is neither a file nor a preset (presets: {', '.join(names)})")


def set_value(data: dict, dotted: str, value: Any) -> None:
    """Set ``key.sub`` of a config mapping to ``value`` in place (missing sections are created)."""
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(node.setdefault(part, {}), dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
        node = node[part]
    node[leaf] = value


def apply_override(data: dict, item: str) -> None:
    """Apply one ``key.sub=value`` override (the value parsed as YAML) to a config mapping in place."""
    dotted, sep, raw = item.partition("=")
    dotted = dotted.strip()
    if not sep or not dotted:
        raise ConfigError(f"--set {item!r}: expected key.sub=value")
    set_value(data, dotted, yaml.safe_load(raw))


def describe_errors(err: ValidationError) -> str:
    """``field.path: message; …`` for every problem pydantic found."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors())


def load_config(schema: type[S], source: str | Path | Mapping[str, Any] | None = None,
                overrides: Iterable[str] = (), values: Mapping[str, Any] | None = None) -> S:
    """Read ``source`` (a YAML file, a shipped preset's name, a mapping, or None for all defaults), set the
    dotted ``values`` (``{"score.batch_size": 8}``: command-line flags), apply the ``key.sub=value``
    ``overrides`` and validate against ``schema``; raises :class:`ConfigError`."""
    if source is None or isinstance(source, Mapping):
        data, origin = copy.deepcopy(dict(source or {})), schema.__name__
    else:
        data, origin = read_yaml(source)
    try:
        data = expand_included(schema, data)
        for dotted, value in (values or {}).items():
            set_value(data, dotted, value)
        for item in overrides:
            apply_override(data, item)
        return schema.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{origin}: {describe_errors(err)}") from err
    except ConfigError as err:
        raise ConfigError(f"{origin}: {err}") from err


def field_of(schema: type[BaseModel], name: str) -> FieldInfo:
    """A copy of field ``name`` of ``schema`` (default, constraints, description), to declare the same setting
    in another schema: ``replicas: int = field_of(ServeConfig, "replicas")``."""
    return copy.copy(schema.model_fields[name])


def default_of(owner: type, name: str) -> Any:
    """The default of field ``name`` of a pydantic model or a dataclass (a new value from a factory)."""
    if issubclass(owner, BaseModel):
        return owner.model_fields[name].get_default(call_default_factory=True)
    (found,) = (f for f in dataclasses.fields(owner) if f.name == name)
    return found.default_factory() if found.default is dataclasses.MISSING else found.default

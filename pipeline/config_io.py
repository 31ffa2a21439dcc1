"""Stage configs from files and ``KEY=VALUE`` assignments (the CLI's ``--config`` and ``--set``).

A stage config is a pydantic model (``ExportConfig``, ``PrepareDatasetConfig``, ``TrainRunConfig``,
...). :func:`load_config` builds one from, in order (later wins): the model's defaults, a config
file, field values (the CLI's flags), then ``KEY=VALUE`` assignments:

- a config file is YAML (JSON is YAML too) holding any of the model's fields, nested sections as
  mappings; YAML dates stay strings (``end: 2003-05-30`` is the text the configs expect);
- ``KEY`` is a field name, dotted for nested fields (``dask.n_workers``); ``VALUE`` is read as a
  YAML value (``4``, ``true``, ``null``, ``[a.geojson, b.geojson]``, else the text itself).

Unknown keys are refused (:class:`ConfigError`) whatever the model's own ``extra`` policy, so a
typo never silently does nothing. :func:`describe_validation_error` turns pydantic's report into
one line naming the CLI flag where there is one.
"""
from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A config file or assignment that cannot apply (missing file, unknown key, not a mapping)."""


class _Loader(yaml.SafeLoader):
    """Safe YAML without implicit timestamps."""


_Loader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def parse_value(text: str) -> Any:
    """``"4"`` -> 4, ``"true"`` -> True, ``"null"`` -> None, ``"[a, b]"`` -> ["a", "b"], ``"2003-05-30"``
    -> "2003-05-30"; text YAML cannot read stays text."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def dump_config(cfg: BaseModel) -> str:
    """``cfg`` as YAML, every field (what ``--print-config`` prints; a valid ``--config`` file)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML/JSON config file (empty file: ``{}``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML/JSON: {' '.join(str(exc).split())}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config fields, not a {type(data).__name__}")
    return data


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation admits (``X``, ``X | None``, ``str | X``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _models_in(a)]
    return []


def section_model(cls: type[BaseModel], dotted: str) -> type[BaseModel] | None:
    """The model of the section a dotted key ends in (None: a plain field); ConfigError if the key is unknown."""
    node: type[BaseModel] | None = cls
    for i, part in enumerate(dotted.split(".")):
        if node is None:
            raise ConfigError(f"unknown config key {dotted!r}: {'.'.join(dotted.split('.')[:i])} is not a section")
        if part not in node.model_fields:
            where = f" in {'.'.join(dotted.split('.')[:i])}" if i else ""
            raise ConfigError(f"unknown config key {dotted!r}; known{where}: {', '.join(node.model_fields)}")
        models = _models_in(node.model_fields[part].annotation)
        node = models[0] if len(models) == 1 else None
    return node


def check_keys(cls: type[BaseModel], data: dict[str, Any], prefix: str = "") -> None:
    """Refuse any key of ``data`` (recursively, into sections given as mappings) that ``cls`` lacks."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        sub = section_model(cls, dotted)
        if sub is not None and isinstance(value, dict):
            check_keys(cls, value, f"{dotted}.")


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data[a][b] = value`` for ``"a.b"``, creating sections (a model instance is dumped first)."""
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, BaseModel):
            child = node[part] = child.model_dump()
        elif not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} holds {child!r}, not a section")
        node = child
    node[parts[-1]] = value


def split_assignment(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r} must look like KEY=VALUE (dotted KEY for nested fields)")
    key, raw = item.split("=", 1)
    return key.strip(), raw


def load_config(cls: type[BaseModel], *, file: str | Path | None = None, values: dict[str, Any] | None = None,
                sets: list[str] | tuple[str, ...] = (), other_keys_to: str | None = None) -> BaseModel:
    """``cls`` from its defaults < ``file`` < ``values`` (dotted field -> value) < ``sets``
    (``KEY=VALUE``). ``other_keys_to``: a list field that collects, as ``"KEY=VALUE"`` text, the
    assignments whose first key part is not a field of ``cls`` (the train command's model-config
    overrides); without it such keys are refused."""
    data: dict[str, Any] = read_config_file(file) if file is not None else {}
    check_keys(cls, data)
    for dotted, value in (values or {}).items():
        section_model(cls, dotted)
        set_path(data, dotted, value)
    for item in sets:
        key, raw = split_assignment(item)
        if other_keys_to is not None and key.split(".")[0] not in cls.model_fields:
            data[other_keys_to] = [*data.get(other_keys_to, []), f"{key}={raw}"]
            continue
        section_model(cls, key)
        set_path(data, key, parse_value(raw))
    return cls.model_validate(data)


def describe_validation_error(exc: ValidationError, names: dict[str, str] | None = None) -> str:
    """One line for a pydantic error; ``names`` maps dotted fields to what the user typed (``--other-bands``)."""
    names = names or {}
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        name = names.get(loc, loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            parts.append(f"{name} must be {err['ctx']['expected']}, got {err['input']!r}")
        elif err["type"] == "missing":
            parts.append(f"{name} is required")
        else:
            parts.append(f"{name}: {msg}" if name else msg)
    return "; ".join(" ".join(p.split()) for p in parts)

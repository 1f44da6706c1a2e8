"""YAML loading that remembers where every key and item came from, and typed field readers on top.

PyYAML's plain loaders forget line numbers, yet a message like "lab.yaml:14: vms[3].host: unknown host"
is what lets a user fix a 500-line lab file. Mappings and lists are loaded as `YamlMap` / `YamlList`
(dict / list subclasses that also hold the lines of their keys and items); scalars are plain values,
located by their parent. `MapReader` reads one mapping's fields with type checks and builds the
"FILE:LINE: FIELD: message" errors, so both parsers report problems the same way.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import yaml

from testlab.domain.durations import EXPECTED as DURATION_EXPECTED
from testlab.domain.durations import format_duration, parse_duration
from testlab.domain.errors import DefinitionError
from testlab.domain.inputlimits import (
    MAX_DOMAIN_NAME,
    MAX_JOB_FILE_BYTES,
    MAX_LINE,
    MAX_NAME,
    MAX_NESTING,
    MAX_NUMBER_CHARACTERS,
    MAX_TEXT,
    integer_problem,
    preview,
    text_problem,
)
from testlab.domain.sizes import parse_size

T = TypeVar("T")

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"
# Hypervisor domains and snapshots: what every backend accepts. The local backend takes exactly
# these (a name is a directory); libvirt takes more but refuses '/' and control characters; a
# command host receives the name shell-quoted.
DOMAIN_NAME_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._+-]{{0,{MAX_DOMAIN_NAME - 1}}}")
DOMAIN_NAME_RULE = (
    f"letters, digits, '.', '_', '+' and '-', starting with a letter or digit, "
    f"at most {MAX_DOMAIN_NAME} characters"
)


class YamlMap(dict):
    """A YAML mapping with the 1-based line of the mapping and of each of its keys."""

    line: int = 0
    key_lines: dict[Any, int]

    def key_line(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class YamlList(list):
    """A YAML sequence with the 1-based line of the sequence and of each of its items."""

    line: int = 0
    item_lines: list[int]

    def item_line(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class FrozenMap(Mapping[str, Any]):
    """An immutable, hashable mapping of str keys, so definition dataclasses stay truly frozen."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        # The keys only: values may be plain lists and mappings (host options), and equal maps have
        # equal keys, which is all a hash must respect.
        return hash(frozenset(self._items))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"


class _Loader(yaml.SafeLoader):
    source: str | None = None


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[YamlMap]:
    data = YamlMap()
    data.line = node.start_mark.line + 1
    data.key_lines = {}
    yield data
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise DefinitionError(
                f"duplicate key {key!r} (first on line {seen[key]})", source=loader.source, line=line
            )
        seen[key] = line
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise DefinitionError(
                "a mapping key must be a plain value, not a list or mapping", source=loader.source, line=line
            ) from None
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = line


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> Iterator[YamlList]:
    data = YamlList()
    data.line = node.start_mark.line + 1
    data.item_lines = []
    yield data
    for item in node.value:
        data.append(loader.construct_object(item, deep=True))
        data.item_lines.append(item.start_mark.line + 1)


def _number_constructor(convert: Callable[[Any, yaml.ScalarNode], Any]) -> Callable[..., Any]:
    def construct(loader: _Loader, node: yaml.ScalarNode) -> Any:
        # Python refuses to convert integers of more than 4300 digits (ValueError, not a YAML error)
        # and a huge one costs time; no field takes such a number, so refuse it with its line.
        if len(node.value) > MAX_NUMBER_CHARACTERS:
            raise DefinitionError(
                f"number too long: {len(node.value):,} characters (at most {MAX_NUMBER_CHARACTERS})",
                source=loader.source,
                line=node.start_mark.line + 1,
            )
        return convert(loader, node)

    return construct


_CONSTRUCTORS = {
    "tag:yaml.org,2002:map": _construct_map,
    "tag:yaml.org,2002:seq": _construct_seq,
    "tag:yaml.org,2002:int": _number_constructor(yaml.SafeLoader.construct_yaml_int),
    "tag:yaml.org,2002:float": _number_constructor(yaml.SafeLoader.construct_yaml_float),
}
for _tag, _constructor in _CONSTRUCTORS.items():
    _Loader.add_constructor(_tag, _constructor)

if hasattr(yaml, "CSafeLoader"):

    class _FastLoader(yaml.CSafeLoader):  # libyaml's parser: about 4x faster on a 10,000-VM lab
        source: str | None = None

    for _tag, _constructor in _CONSTRUCTORS.items():
        _FastLoader.add_constructor(_tag, _constructor)
else:  # pragma: no cover - PyYAML built without libyaml
    _FastLoader = _Loader  # type: ignore[misc,assignment]


def read_source(path: Path, *, max_bytes: int = MAX_JOB_FILE_BYTES) -> str:
    """The text of a definition file, or a one-line DefinitionError saying why it cannot be read.

    Only regular files of at most `max_bytes` are read, and the size is known before reading:
    a device (/dev/zero), a pipe or a growing file must be refused, not read forever.
    """
    source = str(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DefinitionError("no such file", source=source) from None
    except OSError as exc:
        raise DefinitionError(f"cannot read: {exc.strerror or exc}", source=source) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise DefinitionError("is a directory, not a file", source=source)
        if not stat.S_ISREG(info.st_mode):
            raise DefinitionError("not a regular file (a device, pipe or socket)", source=source)
        if info.st_size > max_bytes:
            raise _too_large(info.st_size, max_bytes, source)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise DefinitionError(f"cannot read: {exc.strerror or exc}", source=source) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while being read
        raise _too_large(len(data), max_bytes, source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DefinitionError("not UTF-8 text", source=source, line=line) from None


def check_size(text: str, max_bytes: int, source: str) -> None:
    """The size limit of `read_source`, for text that did not come from a file (API, shards)."""
    if len(text) > max_bytes // 4 and len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise _too_large(len(text.encode("utf-8", "surrogatepass")), max_bytes, source)


def _too_large(size: int, max_bytes: int, source: str) -> DefinitionError:
    return DefinitionError(f"too large: {size:,} bytes (at most {max_bytes:,})", source=source)


# The pure-Python parser explains syntax errors better, but needs about 6 s per MiB.
_EXPLAIN_MAX_CHARACTERS = 256 * 1024


def load_yaml(text: str, source: str) -> Any:
    """Parse `text`; YAML syntax errors become DefinitionError with their line. None for an empty file."""
    try:
        _check_nesting(text, source)
        return _load(_FastLoader, text, source)
    except yaml.YAMLError as fast_error:
        # Explain with the pure-Python parser: its messages are clearer and do not depend on whether
        # PyYAML was built with libyaml.
        if len(text) <= _EXPLAIN_MAX_CHARACTERS:
            try:
                _load(_Loader, text, source)
            except yaml.YAMLError as exc:
                raise _syntax_error(exc, source) from None
        raise _syntax_error(fast_error, source) from None


_OPENINGS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSINGS = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _check_nesting(text: str, source: str) -> None:
    """Refuse deep nesting before building anything: the composer recurses, and libyaml's crashes the
    process (a segmentation fault) on a few hundred KB of '['. Reading the events alone is cheap."""
    depth = 0
    for event in yaml.parse(text, Loader=_FastLoader):
        if isinstance(event, _OPENINGS):
            depth += 1
            if depth > MAX_NESTING:
                raise DefinitionError(
                    f"nested too deeply (at most {MAX_NESTING} levels of mappings and lists)",
                    source=source,
                    line=event.start_mark.line + 1,
                )
        elif isinstance(event, _CLOSINGS):
            depth -= 1


def _load(loader_class: type, text: str, source: str) -> Any:
    loader = loader_class(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _syntax_error(exc: yaml.YAMLError, source: str) -> DefinitionError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem:
            problem = f"{problem} ({exc.context})"
        line = mark.line + 1 if mark is not None else None
        return DefinitionError(f"invalid YAML: {problem}", source=source, line=line)
    return DefinitionError(f"invalid YAML: {' '.join(str(exc).split())}", source=source)


def load_top_mapping(text: str, source: str, expected: str) -> YamlMap:
    """The top-level mapping of a definition file; `expected` says what it should contain."""
    data = load_yaml(text, source)
    if data is None:
        raise DefinitionError(f"empty file (expected a mapping with {expected})", source=source)
    if not isinstance(data, YamlMap):
        line = data.line if isinstance(data, YamlList) else 1
        raise DefinitionError(
            f"expected a mapping with {expected} at the top level, got {describe(data)}",
            source=source,
            line=line,
        )
    return data


def describe(value: Any) -> str:
    """How a wrong value is named in messages: precise enough to spot it in the file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {preview(value)}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return preview(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, date):
        return f"date {value.isoformat()}"
    return type(value).__name__


def _quote_hint(value: Any) -> str:
    """YAML turns unquoted on/yes/1.10/2024-01-01 into non-strings; say how to keep them as text."""
    return " (quote it to make it a string)" if isinstance(value, bool | int | float | date) else ""


_MISSING: Any = object()


class MapReader:
    """Typed access to the fields of one YAML mapping, with errors that point at the right line.

    Every string it returns holds no NUL and fits its length limit; one-line strings (the default)
    hold no control character (docs/files.md, "Limits").
    """

    def __init__(self, data: YamlMap, source: str, path: str = "") -> None:
        self.data = data
        self.source = source
        self.path = path

    def field(self, key: Any) -> str:
        plain = isinstance(key, str) and len(key) <= MAX_NAME and key.isprintable()
        shown = key if plain else preview(key)
        return f"{self.path}.{shown}" if self.path else str(shown)

    def line(self, key: Any | None = None) -> int:
        return self.data.line if key is None else self.data.key_line(key)

    def error(
        self, key: Any | None, message: str, *, line: int | None = None, field: str | None = None
    ) -> DefinitionError:
        if field is None:
            field = self.field(key) if key is not None else (self.path or None)
        return DefinitionError(message, source=self.source, line=line or self.line(key), field=field)

    def check_keys(self, allowed: Iterable[str], required: Iterable[str] = ()) -> None:
        """Unknown keys are typos until proven otherwise: reject them and list what is allowed."""
        allowed_set = set(allowed)
        for key in self.data:
            if key not in allowed_set:
                raise self.error(key, f"unknown key (allowed: {', '.join(sorted(allowed_set))})")
        for key in required:
            if key not in self.data:
                raise self.error(None, "missing required key", field=self.field(key))

    def has(self, key: str) -> bool:
        return key in self.data

    def string(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        name: bool = False,
        choices: Iterable[str] = (),
        max_length: int | None = None,
        one_line: bool = True,
    ) -> Any:
        """A non-empty string field. `name=True` also applies the charset of host, VM and step names.

        Its length is at most `max_length` (MAX_NAME for names, else MAX_LINE, or MAX_TEXT when
        `one_line=False`).
        """
        if key not in self.data:
            if default is _MISSING:
                raise self.error(None, "missing required key", field=self.field(key))
            return default
        value = self.data[key]
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {describe(value)}{_quote_hint(value)}")
        if max_length is None:
            max_length = MAX_NAME if name else MAX_LINE if one_line else MAX_TEXT
        problem = text_problem(value, max_length=max_length, one_line=one_line)
        if problem:
            raise self.error(key, problem)
        if not value.strip():
            raise self.error(key, "must not be empty")
        choice_list = list(choices)
        if choice_list and value not in choice_list:
            raise self.error(key, f"expected one of {', '.join(choice_list)}, got {value!r}")
        if name and not NAME_PATTERN.fullmatch(value):
            raise self.error(key, f"invalid name {value!r}: use {NAME_RULE}")
        return value

    def text(self, key: str, *, max_length: int = MAX_TEXT) -> str:
        """Free text (descriptions): a string, possibly empty, possibly several lines; absent means ""."""
        value = self.data.get(key, "")
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {describe(value)}{_quote_hint(value)}")
        problem = text_problem(value, max_length=max_length, one_line=False)
        if problem:
            raise self.error(key, problem)
        return value

    def integer(
        self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        """An integer field; with `maximum`, a range error names both ends (the column's range)."""
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {describe(value)}")
        if maximum is not None:
            problem = integer_problem(value, minimum if minimum is not None else -maximum - 1, maximum)
            if problem:
                raise self.error(key, problem)
        if minimum is not None and value < minimum:
            qualifier = "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"
            raise self.error(key, f"expected {qualifier}, got {value}")
        return value

    def duration(self, key: str, default: float, *, maximum: float | None = None) -> float:
        """A duration in seconds; with `maximum`, longer ones are refused."""
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(key, f"{DURATION_EXPECTED}, got {describe(value)}")
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None
        if maximum is not None and seconds > maximum:
            raise self.error(
                key, f"must be at most {format_duration(maximum)}, got {format_duration(seconds)}"
            )
        return seconds

    def size(self, key: str, default: Any, *, maximum: int) -> Any:
        """A size in bytes ("5G", "500M", "1.5T" or a number of bytes) of at most `maximum`."""
        if key not in self.data:
            return default
        value = self.data[key]
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None
        if size > maximum:
            raise self.error(key, f"must be at most {maximum} bytes, got {preview(value)}")
        return size

    def existing_file(self, key: str, anchor: Path) -> str:
        """The absolute path of a file that must exist; a relative path is relative to `anchor`."""
        path = Path(self.string(key))
        resolved = str(path if path.is_absolute() else anchor / path)
        if not Path(resolved).is_file():
            raise self.error(key, f"no such file: {resolved!r}")
        if len(resolved) > MAX_LINE:  # the lab keeps the absolute path
            raise self.error(key, f"path too long: {len(resolved):,} characters (at most {MAX_LINE})")
        return resolved

    def boolean(self, key: str, default: bool) -> bool:
        """A YAML boolean (`true`, `false`); a string such as "true" is refused, not guessed at."""
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {describe(value)}")
        return value

    def mapping(self, key: str) -> MapReader | None:
        if key not in self.data:
            return None
        value = self.data[key]
        if not isinstance(value, YamlMap):
            raise self.error(key, f"expected a mapping, got {describe(value)}")
        return MapReader(value, self.source, self.field(key))

    def items(
        self, key: str, *, required: bool = False, non_empty: bool = False, max_items: int | None = None
    ) -> list[tuple[Any, int, str]]:
        """The items of a list field as (value, line, field path), e.g. ('x', 12, 'steps[1].files[0]')."""
        if key not in self.data:
            if required:
                raise self.error(None, "missing required key", field=self.field(key))
            return []
        value = self.data[key]
        if not isinstance(value, YamlList):
            raise self.error(key, f"expected a list, got {describe(value)}")
        if non_empty and not value:
            raise self.error(key, "must not be an empty list")
        if max_items is not None and len(value) > max_items:
            raise self.error(key, f"too many items: {len(value):,} (at most {max_items:,})")
        return [(item, value.item_line(i), f"{self.field(key)}[{i}]") for i, item in enumerate(value)]

    def string_list(
        self,
        key: str,
        *,
        non_empty: bool = False,
        check: Callable[[str], str | None] | None = None,
        max_items: int | None = None,
        max_length: int = MAX_LINE,
    ) -> tuple[str, ...]:
        """A list of distinct non-empty one-line strings; `check` returns an error message or None."""
        result: list[str] = []
        first_line: dict[str, int] = {}
        for item, line, field in self.items(key, non_empty=non_empty, max_items=max_items):
            if not isinstance(item, str):
                raise DefinitionError(
                    f"expected a string, got {describe(item)}{_quote_hint(item)}",
                    source=self.source,
                    line=line,
                    field=field,
                )
            problem = text_problem(item, max_length=max_length, one_line=True)
            if problem:
                raise DefinitionError(problem, source=self.source, line=line, field=field)
            if not item.strip():
                raise DefinitionError("must not be empty", source=self.source, line=line, field=field)
            if item in first_line:
                raise DefinitionError(
                    f"duplicate {item!r} (first on line {first_line[item]})",
                    source=self.source,
                    line=line,
                    field=field,
                )
            problem = check(item) if check else None
            if problem:
                raise DefinitionError(problem, source=self.source, line=line, field=field)
            first_line[item] = line
            result.append(item)
        return tuple(result)

    def string_map(
        self,
        key: str,
        *,
        key_pattern: re.Pattern[str] | None = None,
        key_rule: str = "",
        max_length: int = MAX_TEXT,
        max_key_length: int = MAX_NAME,
    ) -> FrozenMap:
        """A mapping of string -> string (commands, environment variables); values may span lines."""
        reader = self.mapping(key)
        if reader is None:
            return FrozenMap()
        result: dict[str, str] = {}
        for name, value in reader.data.items():
            if not isinstance(name, str):
                raise reader.error(name, f"expected a string key, got {describe(name)}")
            if len(name) > max_key_length:
                raise reader.error(
                    name, f"name too long: {len(name):,} characters (at most {max_key_length})"
                )
            if key_pattern is not None and not key_pattern.fullmatch(name):
                raise reader.error(name, f"invalid name {name!r}: {key_rule}")
            if not isinstance(value, str):
                raise reader.error(name, f"expected a string, got {describe(value)}{_quote_hint(value)}")
            problem = text_problem(value, max_length=max_length, one_line=False)
            if problem:
                raise reader.error(name, problem)
            result[name] = value
        return FrozenMap(result)


def sub_readers(
    reader: MapReader,
    key: str,
    *,
    required: bool = True,
    non_empty: bool = False,
    max_items: int | None = None,
) -> list[MapReader]:
    """Readers for a list of mappings (hosts, vms, steps), each with its own path like 'vms[2]'."""
    result = []
    for item, line, field in reader.items(key, required=required, non_empty=non_empty, max_items=max_items):
        if not isinstance(item, YamlMap):
            raise DefinitionError(
                f"expected a mapping, got {describe(item)}", source=reader.source, line=line, field=field
            )
        result.append(MapReader(item, reader.source, field))
    return result

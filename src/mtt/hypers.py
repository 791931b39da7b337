"""Typed options: plain YAML dicts in, validated dataclasses out, and back.

Every group of options (an architecture's hypers, the training section, a dataset section) is a
:mod:`dataclasses` dataclass. Each field's annotation says what values are allowed, its default (if
any) what happens when the key is left out, and the string literal written right after it (an
"attribute docstring") what it means. This module is the one generic machinery on top of that:

* :func:`parse` turns a dict from ``yaml.safe_load`` into the dataclass. It is strict (unknown keys,
  wrong types and missing required keys are errors) and it collects *every* problem in the whole
  nested structure before raising a single :class:`~mtt.errors.OptionsError`, one line per problem,
  each naming the dotted key path, so users fix all their mistakes in one go.
* :func:`to_dict` is the inverse: plain dicts, lists and scalars for ``yaml.safe_dump``;
  ``parse(cls, to_dict(x)) == x``.
* :func:`field_docs` reads the attribute docstrings, for help texts and generated docs.
* :func:`apply_overrides` applies command-line ``-r key.path=value`` overrides to the raw dict.
* :func:`describe_type` renders an annotation in words ("an integer", "a string or null").

Conversion rules: ``bool`` accepts only real booleans; ``int`` accepts integers but not booleans
or floats; ``float`` accepts integers and floats (not booleans), and, as the one exception to
strictness, strings in exponent notation such as ``"1e-3"``, because PyYAML (YAML 1.1) reads
``1e-3`` as a string. ``str``, ``Literal``, ``Optional``, ``Union`` (first member that validates
wins), ``List``/``list`` (tuples accepted too), ``Dict``, ``Any`` and nested dataclasses are
supported. A dataclass section given as null (an empty YAML section) takes all its defaults,
unless the annotation is a ``Union`` (``Optional[Section]`` reads null as None).

Validation hook: a dataclass may define ``validate(self) -> List[Tuple[str, str]]``. It runs after
the instance is built, and only when nothing inside it had a problem. Each returned pair is
``(field_name, message)`` and becomes the line ``option '<path>.<field_name>' <message>``; an empty
field name refers to the section itself (``option '<path>' <message>``). For example returning
``[("learning_rate", "must be positive, got -1.0")]`` at path ``architecture.training`` gives
``option 'architecture.training.learning_rate' must be positive, got -1.0``.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import inspect
import logging
import math
import re
import textwrap
import types
import typing
from typing import Any, Dict, List, Literal, Tuple, Union

import yaml

from mtt.errors import OptionsError

LOGGER = logging.getLogger("mtt")

__all__ = [
    "parse",
    "to_dict",
    "field_docs",
    "apply_overrides",
    "describe_type",
    "cutoff_problems",
    "changed_fields",
    "minimum_problems",
]

T = typing.TypeVar("T")

# Returned by converters when a value does not fit; the reasons were appended to `problems`.
_BAD = object()
_NONE = type(None)

# Numbers that PyYAML (YAML 1.1) leaves as strings: exponent without a dot or without a sign.
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+")

# The scalar types: how to say "one of them" and "several of them".
_WORDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
_WORDS[_NONE] = "null"
_PLURALS = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
_PLURALS[_NONE] = "nulls"


# ---------------------------------------------------------------------------------- describing


def describe_type(tp: Any) -> str:
    """The words for the values allowed by annotation ``tp``, e.g. ``"a list of numbers"``."""
    if tp is Any:
        return "anything"
    if tp in _WORDS:
        return _WORDS[tp]
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        shown = [_yaml_repr(a) for a in args]
        return f"one of {', '.join(shown)}" if len(shown) > 1 else shown[0]
    if origin in (Union, types.UnionType):
        words = [describe_type(a) for a in args]
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
    if tp is list or origin is list:
        return "a list" if not args or args[0] is Any else f"a list of {_plural(args[0])}"
    if tp is dict or origin is dict:
        if not args or args[1] is Any:
            return "a mapping"
        return f"a mapping from {_plural(args[0])} to {_plural(args[1])}"
    return repr(tp)


def _plural(tp: Any) -> str:
    if tp in _PLURALS:
        return _PLURALS[tp]
    if dataclasses.is_dataclass(tp) or tp is dict or typing.get_origin(tp) is dict:
        return "mappings"
    if tp is list or typing.get_origin(tp) is list:
        return "lists"
    return f"values that are each {describe_type(tp)}"


def _yaml_repr(value: Any) -> str:
    """A literal value as a user would write it in YAML (true, null, 'text')."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value)


def _show(value: Any) -> str:
    """The offending value for a message: its repr, truncated, and its type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _name(path: str) -> str:
    return f"option '{path}'" if path else "the options"


def _expected(tp: Any, value: Any, path: str) -> str:
    return f"{_name(path)} must be {describe_type(tp)}, got {_show(value)}"


def _join(path: str, key: Any) -> str:
    # repr() for odd keys (newlines, non-strings) keeps every message on one line.
    shown = key if isinstance(key, str) and key.isprintable() else repr(key)
    return f"{path}.{shown}" if path else shown


# ---------------------------------------------------------------------------------- parsing


def parse(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data`` (a dict, or None for all defaults).

    ``path`` is the dotted key path of ``data`` inside the whole options, used in messages.
    Raises one :class:`OptionsError` listing every problem found.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"parse() needs a dataclass, got {cls!r}")
    problems: List[str] = []
    result = _build(cls, data, path, problems)
    if problems:
        raise OptionsError(problems)
    return result


def _build(cls: Any, data: Any, path: str, problems: List[str]) -> Any:
    """Convert a mapping into dataclass ``cls``, appending problems; _BAD if it failed."""
    if data is None:
        data = {}  # an empty YAML section means "all defaults"
    shorthand = getattr(cls, "__shorthand__", None)
    if isinstance(data, str) and shorthand:  # one value for its main option: `loss: mse`
        data = {shorthand: data}
    if not isinstance(data, dict):
        problems.append(f"{_name(path)} must be a mapping, got {_show(data)}")
        return _BAD
    start = len(problems)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            problems.append(_unknown_key(key, list(fields), path, _metatrain_keys(cls)))
    kwargs = {}
    for name, field in fields.items():
        if name in data and data[name] is None and typing.get_origin(hints[name]) in (dict, Dict):
            # a section whose keys are all commented out: its defaults, as for a dataclass
            kwargs[name] = {}
        elif name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(path, name), problems)
            if kwargs[name] is _BAD and data[name] is None:
                _null_means_default(field, problems)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            problems.append(f"missing required option '{_join(path, name)}'")
    if len(problems) > start:
        _validate_the_rest(cls, kwargs, path, problems)
        return _BAD
    instance = cls(**kwargs)
    _run_validate_hook(instance, path, problems)
    return instance if len(problems) == start else _BAD


def _null_means_default(field: dataclasses.Field, problems: List[str]) -> None:
    """metatrain's files write ``null`` for "unset": a refused null says that leaving the key
    out gives its default (the type alone did not tell how to get it)."""
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        return
    problems[-1] += f"; or leave the key out for its default, {_yaml_repr(default)}"


def _validate_the_rest(cls: Any, kwargs: Dict[str, Any], path: str, problems: List[str]) -> None:
    """The value checks of the options that did convert, with defaults standing in for those
    that did not, so that every mistake is reported in one go (a wrong type hid the wrong
    values elsewhere until it was fixed). Checks that involve a failed option are left out."""
    bad = {name for name, value in kwargs.items() if value is _BAD}
    try:
        instance = cls(**{k: v for k, v in kwargs.items() if v is not _BAD})
    except Exception:  # a required option failed: nothing to check against
        return
    found: List[str] = []
    try:
        _run_validate_hook(instance, path, found)
    except Exception:  # a check that cannot run on defaults standing in
        return
    problems += [line for line in found if not any(name in line for name in bad)]


# metatrain's training options that mtt spells differently or does without
METATRAIN_OPTIONS = {
    "atomic_baseline": "fixed references per element are 'fixed_composition_weights'",
    "scale_targets": "mtt always scales each target by its spread in the training set; remove it",
    "fixed_scaling_weights": "mtt scales each target by its spread in the training set; remove it",
    "warmup_fraction": "the warm-up is 'warmup_epochs', a number of epochs",
    "log_mae": "mtt logs RMSE and MAE of every quantity; remove it",
    "log_separate_blocks": "mtt has no separate blocks to log; remove it",
    "best_model_metric": "mtt keeps the model with the lowest validation loss; remove it",
    "num_workers": "mtt prepares the data once, in the main process; remove it",
    "distributed_port": "the port comes from torchrun or MASTER_PORT; remove it",
    "min_atoms_per_batch": "mtt has only 'max_atoms_per_batch'; remove it",
}


def _metatrain_keys(cls: Any) -> Dict[str, str]:
    """What a section says of metatrain's keys that it lacks: ``__metatrain__`` of its
    dataclass (``"*"``: any unknown key), with the training loop's for training sections."""
    own = dict(getattr(cls, "__metatrain__", {}))
    if any(c.__name__ == "TrainingHypers" for c in getattr(cls, "__mro__", ())):
        own = {**METATRAIN_OPTIONS, **own}
    return own


def _unknown_key(key: Any, valid: List[str], path: str, metatrain: Dict[str, str]) -> str:
    message = f"unknown option '{_join(path, key)}'"
    hint = metatrain.get(str(key), metatrain.get("*"))
    if hint is not None:
        return f"{message} (metatrain's): {hint}"
    close = difflib.get_close_matches(str(key), valid, n=1)
    if close:
        return f"{message}; did you mean '{close[0]}'?"
    if not valid:  # e.g. finetune.config of method full
        return f"{message}: '{path}' takes no options here; remove it"
    listed = ", ".join(f"'{name}'" for name in valid)
    return f"{message}; valid options here are {listed}"


def _run_validate_hook(instance: Any, path: str, problems: List[str]) -> None:
    hook = getattr(instance, "validate", None)
    if not callable(hook):
        return
    for field_name, message in hook() or []:
        problems.append(f"{_name(_join(path, field_name) if field_name else path)} {message}")


def _convert(tp: Any, value: Any, path: str, problems: List[str]) -> Any:
    """Check ``value`` against annotation ``tp``; the converted value, or _BAD with problems."""
    if tp is Any:
        return copy.deepcopy(value)  # never alias the caller's data
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _convert_union(tp, value, path, problems)
    if origin is Literal:
        return _convert_literal(tp, value, path, problems)
    if tp is list or origin is list:
        return _convert_list(tp, value, path, problems)
    if tp is dict or origin is dict:
        return _convert_dict(tp, value, path, problems)
    if tp in _WORDS:
        result = _convert_scalar(tp, value)
        if result is _BAD:
            problems.append(_expected(tp, value, path))
        return result
    raise TypeError(f"mtt.hypers cannot handle the annotation {tp!r} (at '{path}')")


def _convert_scalar(tp: type, value: Any) -> Any:
    # bool is a subclass of int in Python, so exact type checks keep true/1 apart.
    if tp is bool or tp is str or tp is _NONE:
        return value if type(value) is tp else _BAD
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # NaN and infinities are never a sensible setting (a NaN learning rate, an
        # infinite cutoff) and would slip through every later range check
        return float(value) if math.isfinite(value) else _BAD
    return _BAD


def _convert_union(tp: Any, value: Any, path: str, problems: List[str]) -> Any:
    members = typing.get_args(tp)
    if value is None:
        # Null reads as "all defaults" only where the annotation is the section type itself;
        # in a union it would be ambiguous, so it must be allowed explicitly (Optional).
        if _NONE in members:
            return None
        problems.append(_expected(tp, value, path))
        return _BAD
    for member in members:
        result = _convert(member, value, path, [])
        if result is not _BAD:
            return result
    # When only one member has the value's shape (a mapping, a list), its detailed problems
    # (an unknown key deep inside, say) help more than "must be a number or a mapping".
    shaped = [m for m in members if _same_shape(m, value)]
    if len(shaped) == 1:
        return _convert(shaped[0], value, path, problems)
    problems.append(_expected(tp, value, path))
    return _BAD


def _same_shape(tp: Any, value: Any) -> bool:
    origin = typing.get_origin(tp)
    if isinstance(value, dict):
        return dataclasses.is_dataclass(tp) or tp is dict or origin is dict
    if isinstance(value, (list, tuple)):
        return tp is list or origin is list
    return False


def _convert_literal(tp: Any, value: Any, path: str, problems: List[str]) -> Any:
    allowed = typing.get_args(tp)
    # Compare types too: 1 == True in Python, but not in the options.
    if any(type(value) is type(a) and value == a for a in allowed):
        return value
    # YAML 1.1 reads an unquoted off/no (on/yes) as false (true): a choice spelt that way
    # means the word, as the documentation writes it (distributed: off)
    if isinstance(value, bool):
        words = [w for w in (("on", "yes") if value else ("off", "no")) if w in allowed]
        if len(words) == 1:
            return words[0]
    message = _expected(tp, value, path)
    if isinstance(value, str):
        close = difflib.get_close_matches(value, [a for a in allowed if isinstance(a, str)], n=1)
        message += f"; did you mean '{close[0]}'?" if close else ""
    problems.append(message)
    return _BAD


def _convert_list(tp: Any, value: Any, path: str, problems: List[str]) -> Any:
    if not isinstance(value, (list, tuple)):
        problems.append(_expected(tp, value, path))
        return _BAD
    args = typing.get_args(tp)
    item_tp = args[0] if args else Any
    items = [_convert(item_tp, item, f"{path}[{i}]", problems) for i, item in enumerate(value)]
    return _BAD if any(item is _BAD for item in items) else items


def _convert_dict(tp: Any, value: Any, path: str, problems: List[str]) -> Any:
    if not isinstance(value, dict):
        problems.append(_expected(tp, value, path))
        return _BAD
    key_tp, value_tp = typing.get_args(tp) or (Any, Any)
    result, ok = {}, True
    for key, item in value.items():
        new_key = _convert(key_tp, key, path, [])
        if new_key is _BAD:
            problems.append(
                f"{_name(path)} has the key {_show(key)}; keys must be {_plural(key_tp)}"
            )
        new_item = _convert(value_tp, item, _join(path, key), problems)
        ok = ok and new_key is not _BAD and new_item is not _BAD
        result[new_key] = new_item
    return result if ok else _BAD


# ---------------------------------------------------------------------------------- dumping


def to_dict(instance: Any) -> Dict[str, Any]:
    """The dataclass ``instance`` as plain nested dicts, lists and scalars (for yaml.safe_dump)."""
    if not dataclasses.is_dataclass(instance) or isinstance(instance, type):
        raise TypeError(f"to_dict() needs a dataclass instance, got {instance!r}")
    return _plain(instance)


def _plain(value: Any) -> Any:
    # Not dataclasses.asdict: it would keep tuples, which yaml.safe_dump refuses.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return copy.deepcopy(value)


# ---------------------------------------------------------------------------------- docs


def field_docs(cls: type) -> Dict[str, str]:
    """The attribute docstring of every field of dataclass ``cls`` ("" when it has none).

    Fields inherited from base dataclasses are included; a subclass that redeclares a field
    with a new docstring overrides the base's.
    """
    docs: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_class_attribute_docs(klass))
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


def _class_attribute_docs(klass: type) -> Dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):  # defined dynamically or in an interactive session
        return {}
    tree = ast.parse(source)
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    if node is None:
        return {}
    docs = {}
    for statement, following in zip(node.body, node.body[1:], strict=False):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = inspect.cleandoc(following.value.value)
    return docs


# ---------------------------------------------------------------------------------- overrides


def apply_overrides(data: Dict[str, Any] | None, overrides: List[str]) -> Dict[str, Any]:
    """A copy of ``data`` with each ``dotted.key.path=value`` override applied.

    Values are read as YAML (``3`` is an integer, ``true`` a boolean, ``[1, 2]`` a list) except
    that exponent numbers such as ``1e-3``, which YAML 1.1 keeps as strings, become floats.
    Missing intermediate sections are created. All malformed overrides are reported together.
    """
    result = copy.deepcopy(data) if data is not None else {}
    if not isinstance(result, dict):
        raise OptionsError(
            f"cannot apply overrides: the options are {_show(result)}, not a mapping"
        )
    problems: List[str] = []
    for override in overrides:
        parsed = _split_override(override, problems)
        if parsed is not None:
            _set_path(result, parsed[0], parsed[1], override, problems)
    if problems:
        raise OptionsError(problems)
    return result


class OptionsLoader(yaml.SafeLoader):
    """Safe YAML (plain data only) that refuses a key given twice in one mapping, e.g. two
    ``architecture:`` sections, which PyYAML would silently resolve by keeping the last."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_lines: Dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue  # merge keys (<<) may override; unhashable keys fail later
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in first_lines:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"the key {key!r} is given twice (first at line {first_lines[key]}); "
                        "keep one of them (sections given twice are not merged)",
                        key_node.start_mark,
                    )
                first_lines[key] = line
        return super().construct_mapping(node, deep=deep)


def _numbers_as_in_yaml_12(resolvers: Dict[Any, list]) -> Dict[Any, list]:
    """PyYAML's implicit types with YAML 1.2's numbers: YAML 1.1 reads ``1:30`` as the
    base-60 number 90 and ``010`` as the octal 8 (a seed or an epoch count changed without
    a word), and ``1e-3`` as a string. Underscores between digits stay allowed."""
    integer, real = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
    table = {
        first: [(tag, regex) for tag, regex in entries if tag not in (integer, real)]
        for first, entries in resolvers.items()
    }
    digits = r"[0-9][0-9_]*"
    numbers = [
        (integer, re.compile(rf"^[-+]?{digits}$"), "-+0123456789"),
        (
            real,
            re.compile(
                rf"^(?:[-+]?(?:{digits}(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?"
                r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
            ),
            "-+0123456789.",
        ),
    ]
    for tag, regex, firsts in numbers:
        for first in firsts:
            table.setdefault(first, []).append((tag, regex))
    return table


OptionsLoader.yaml_implicit_resolvers = _numbers_as_in_yaml_12(
    yaml.SafeLoader.yaml_implicit_resolvers
)
# decimal, whatever the leading zeros (YAML 1.1's constructor would read 010 as octal)
OptionsLoader.add_constructor(
    "tag:yaml.org,2002:int",
    lambda loader, node: int(loader.construct_scalar(node).replace("_", ""), 10),
)


def _split_override(override: str, problems: List[str]) -> Tuple[List[str], Any] | None:
    key, sep, text = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(part.strip() for part in parts):
        problems.append(f"malformed override '{override}'; expected the form -r key.path=value")
        return None
    try:
        value = yaml.load(text, Loader=OptionsLoader)  # a safe loader
    except yaml.YAMLError as error:
        first_line = getattr(error, "problem", None) or str(error).splitlines()[0]
        problems.append(f"cannot read the value of override '{override}' as YAML: {first_line}")
        return None
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        value = float(value)
    return [part.strip() for part in parts], value


def _set_path(
    data: Dict[str, Any], parts: List[str], value: Any, override: str, problems: List[str]
) -> None:
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:  # absent, or an empty YAML section
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            problems.append(
                f"cannot apply override '{override}': '{where}' is {_show(child)}, not a mapping, "
                f"so it cannot hold the sub-key '{parts[depth + 1]}'"
            )
            return
        node = child
    _say_dropped_keys(node.get(parts[-1]), value, parts)
    node[parts[-1]] = value


def _say_dropped_keys(old: Any, new: Any, parts: List[str]) -> None:
    """An override sets its value whole: a mapping replaces the file's section, whose other
    keys go back to their defaults. Legal, but rarely meant: said, with the per-key form."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return
    dropped = sorted(str(key) for key in set(old) - set(new))
    if dropped:
        where = ".".join(parts)
        example = f"{where}.{next(iter(new))}=..." if new else f"{where}.<key>=..."
        LOGGER.warning(
            "override of '%s' replaces the whole section: %s of the options file no longer "
            "apply; to change single keys, give each as -r %s",
            where,
            ", ".join(dropped),
            example,
        )


def cutoff_problems(section: Any, width: float | None = None) -> List[Tuple[str, str]]:
    """Checks shared by every architecture with a smooth cutoff, for ``validate`` hooks:
    ``section.cutoff`` and the switch ``width`` (by default ``section.cutoff_width``).

    When the width exceeds the cutoff, the message names the key that the user changed from
    its default (the cutoff, mentioning the width, when they changed both or neither)."""
    cutoff = section.cutoff
    width = section.cutoff_width if width is None else width
    problems = []
    if cutoff <= 0:
        problems.append(("cutoff", f"must be positive, got {cutoff}"))
    if width <= 0:
        problems.append(("cutoff_width", f"must be positive, got {width}"))
    elif cutoff > 0 and width > cutoff:
        if changed_fields(section) & {"cutoff", "cutoff_width"} == {"cutoff_width"}:
            message = f"must be at most the cutoff ({cutoff}), got {width}; lower it"
            problems.append(("cutoff_width", message + " or raise 'cutoff'"))
        else:
            message = f"must be at least cutoff_width ({width}), got {cutoff}; raise it"
            problems.append(("cutoff", message + " or lower 'cutoff_width'"))
    return problems


def changed_fields(instance: Any) -> set:
    """Names of the fields of dataclass ``instance`` whose value differs from the default."""
    changed = set()
    for field in dataclasses.fields(instance):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            changed.add(field.name)  # required: always the user's
            continue
        if getattr(instance, field.name) != default:
            changed.add(field.name)
    return changed


def minimum_problems(section: Any, names: Tuple[str, ...], minimum: int) -> List[Tuple[str, str]]:
    """``(name, message)`` for each integer field of ``section`` below ``minimum``."""
    return [
        (name, f"must be at least {minimum}, got {getattr(section, name)}")
        for name in names
        if getattr(section, name) < minimum
    ]

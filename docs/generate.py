"""Reference pages generated from the source of truth, so they cannot drift from the code.

* the options reference, from the dataclasses of :mod:`mtt.options` and of the shared training
  hypers (:mod:`mtt.training.hypers`): every key with its dotted YAML path, its type in words
  (:func:`mtt.hypers.describe_type`), its default written as YAML and its attribute docstring
  (:func:`mtt.hypers.field_docs`);
* one page per architecture found by :func:`mtt.architectures.names`: its docstrings, what it
  supports and the tables of its model and training hypers;
* the command-line reference, read from the parser of ``mtt`` (:func:`mtt.cli.build_parser`);
* for the developer guide: the modules of the package and the shared architecture tests, with
  the first line of their docstrings.

``docs/conf.py`` calls :func:`write_all` at every build; ``tests/test_docs.py`` imports this
file by path and checks the text it returns. Nothing here needs Sphinx.
"""

import argparse
import ast
import dataclasses
import functools
import importlib.util
import inspect
import os
import sys
import textwrap
import types
import typing
from typing import Any, Dict, Iterator, List, Optional, Tuple

import yaml

from mtt import architectures
from mtt.cli import build_parser
from mtt.energy_model import EnergyModel
from mtt.hypers import describe_type, field_docs, to_dict
from mtt.options import Options
from mtt.training.hypers import TrainingHypers

#: Where the generated pages go, relative to the ``docs/`` folder.
GENERATED = os.path.join("reference", "_generated")

#: Where each group of options sits in ``options.yaml``: (root dataclass, dotted path, title).
OPTION_ROOTS = [
    (Options, "", "The options file"),
    (TrainingHypers, "architecture.training", "Training hypers shared by every architecture"),
]


# ---------------------------------------------------------------------------------- rst helpers


def heading(text: str, underline: str) -> str:
    return f"{text}\n{underline * len(text)}\n"


def indent(text: str, prefix: str) -> str:
    """Indent every line but the first (for the continuation lines of a list item)."""
    first, *rest = text.splitlines() or [""]
    return "\n".join([first] + [prefix + line if line.strip() else "" for line in rest])


def list_table(header: Optional[List[str]], rows: List[List[str]], widths: str) -> str:
    lines = [
        ".. list-table::",
        f"   :header-rows: {1 if header else 0}",
        f"   :widths: {widths}",
        "",
    ]
    for row in ([header] if header else []) + rows:
        for column, cell in enumerate(row):
            bullet = "   * - " if column == 0 else "     - "
            lines.append(bullet + indent(cell, "       "))
    return "\n".join(lines) + "\n"


def literal(text: str) -> str:
    return f"``{text}``" if text else "(empty)"


def class_doc(cls: type) -> str:
    """A class's own docstring; "" for a dataclass without one (not its generated signature)."""
    doc = cls.__dict__.get("__doc__") or ""
    if dataclasses.is_dataclass(cls) and doc.startswith(f"{cls.__name__}("):
        return ""
    return inspect.cleandoc(doc)


def as_yaml(value: Any, flow: bool = True) -> str:
    """A value as a user writes it in ``options.yaml`` (``true``, ``null``, ``{a: 1}``)."""
    text = yaml.safe_dump(_plain(value), default_flow_style=flow, sort_keys=False, width=1_000_000)
    return text.strip().removesuffix("...").strip()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # a section at its defaults is written as {}, which reads back as the same defaults
        return {} if value == _default_instance(type(value)) else to_dict(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _default_instance(cls: type) -> Any:
    try:
        return cls()
    except TypeError:  # required keys: no default instance
        return None


# ---------------------------------------------------------------------------------- walking keys


@dataclasses.dataclass
class Section:
    """A dataclass and the dotted path where it first appears in the options."""

    cls: type
    path: str
    also_at: List[str] = dataclasses.field(default_factory=list)

    @property
    def label(self) -> str:
        return f"options-{self.cls.__name__.lower()}"


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def default_of(field: dataclasses.Field) -> Any:
    """The field's default value; ``dataclasses.MISSING`` when the key is required."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def nested_dataclasses(tp: Any, field: dataclasses.Field, path: str) -> Iterator[Tuple[type, str]]:
    """The dataclasses a field's annotation admits, each with the dotted path of its keys.

    A ``Dict[str, Section]`` places its sections under a key name: the first key of the
    field's default (``energy`` for ``targets``), else ``<name>``.
    """
    if dataclasses.is_dataclass(tp):
        yield tp, path
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for member in args:
            yield from nested_dataclasses(member, field, path)
    elif origin is dict and args and dataclasses.is_dataclass(args[1]):
        default = default_of(field)
        key = next(iter(default), "<name>") if isinstance(default, dict) else "<name>"
        yield args[1], join(path, key)
    elif origin is list and args:
        yield from nested_dataclasses(args[0], field, f"{path}[]")


def sections(root: type, path: str, found: Optional[Dict[type, Section]] = None) -> List[Section]:
    """Every dataclass reachable from ``root`` and not in ``found`` yet (which collects them),
    once each, in the order a reader meets them."""
    found = {} if found is None else found
    before = set(found)

    def visit(cls: type, where: str) -> None:
        if cls in found:
            found[cls].also_at.append(where)
            return
        found[cls] = Section(cls, where)
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            for sub, sub_path in nested_dataclasses(
                hints[field.name], field, join(where, field.name)
            ):
                visit(sub, sub_path)

    visit(root, path)
    return [section for cls, section in found.items() if cls not in before]


def key_rows(cls: type, path: str, links: Dict[type, str], flatten: bool) -> List[List[str]]:
    """Table rows (key, type, default, description) of ``cls``'s fields under ``path``.

    Nested sections link to their own section (``links``) or, with ``flatten``, follow as
    rows of their own right after the key that holds them.
    """
    hints, docs, rows = typing.get_type_hints(cls), field_docs(cls), []
    for field in dataclasses.fields(cls):
        key = join(path, field.name)
        tp = hints[field.name]
        nested = list(nested_dataclasses(tp, field, key))
        words = describe_type(tp)
        refs = [f":ref:`{links[sub]}`" for sub, _ in nested if sub in links and not flatten]
        if refs:
            words += " (see " + ", ".join(dict.fromkeys(refs)) + ")"
        default = default_of(field)
        shown = "required" if default is dataclasses.MISSING else literal(as_yaml(default))
        rows.append([literal(key), words, shown, docs[field.name] or "(undocumented)"])
        if flatten:
            for sub, sub_path in nested:
                rows += key_rows(sub, sub_path, links, flatten)
    return rows


KEY_HEADER = ["Key", "Type", "Default", "Description"]
KEY_WIDTHS = "28 18 16 38"


# ---------------------------------------------------------------------------------- options


def options_reference() -> str:
    """The page of every key of ``options.yaml`` outside the architecture's own hypers."""
    parts = [
        ".. This page is generated by docs/generate.py from the dataclasses in mtt.options and\n"
        "   mtt.training.hypers: edit their attribute docstrings, not this file.\n",
        heading("Options reference", "="),
        "Every key of ``options.yaml``, generated from the dataclasses that parse it. A key\n"
        "is written as its dotted path, as in ``mtt train options.yaml -r "
        "architecture.training.num_epochs=10``.\n"
        "The keys of ``architecture.model`` (and any extra keys of ``architecture.training``)\n"
        "belong to the architecture: see :doc:`architectures/index`.\n",
    ]
    found: Dict[type, Section] = {}  # shared: each dataclass documented once, labels unique
    grouped = [(title, sections(root, path, found)) for root, path, title in OPTION_ROOTS]
    links = {cls: section.label for cls, section in found.items()}
    for title, group in grouped:
        parts.append(heading(title, "-"))
        parts += [_section(section, links) for section in group]
    return "\n".join(parts)


def _section(section: Section, links: Dict[type, str]) -> str:
    title = literal(section.path) if section.path else "Top level"
    text = [f".. _{section.label}:\n", heading(title, "~")]
    doc = class_doc(section.cls)
    if doc:
        text.append(doc + "\n")
    if section.also_at:
        where = ", ".join(literal(p) for p in dict.fromkeys(section.also_at))
        text.append(f"The same keys apply under {where}.\n")
    rows = key_rows(section.cls, section.path, links, flatten=False)
    text.append(list_table(KEY_HEADER, rows, KEY_WIDTHS))
    return "\n".join(text)


# ---------------------------------------------------------------------------------- architectures


def architecture_page(name: str) -> str:
    """The page of architecture ``name``: what it is, supports, and its hypers."""
    package = architectures.load(name)
    model, trainer = package.__model__, package.__trainer__
    parts = [
        f".. This page is generated by docs/generate.py from mtt.architectures.{name}: edit its\n"
        "   docstrings and hypers.py, not this file.\n",
        f".. _architecture-{name}:\n",
        heading(name, "="),
    ]
    docs = [inspect.getdoc(package), inspect.getdoc(sys.modules[model.__module__])]
    parts += [doc + "\n" for doc in dict.fromkeys(d for d in docs if d)]
    parts.append(list_table(None, _facts(name, model), "25 75"))
    for title, key, cls in (
        ("Model hypers", "architecture.model", model.__hypers__),
        ("Training hypers", "architecture.training", trainer.__hypers__),
    ):
        parts.append(heading(f"{title}: ``{key}``", "-"))
        doc = class_doc(cls)
        if doc:
            parts.append(doc + "\n")
        rows = key_rows(cls, key, {}, flatten=True)
        parts.append(list_table(KEY_HEADER, rows, KEY_WIDTHS))
    parts.append(_defaults_block(name, model.__hypers__, trainer.__hypers__))
    return "\n".join(parts)


def _facts(name: str, model: type) -> List[List[str]]:
    dtypes = [str(dtype).removeprefix("torch.") for dtype in model.__supported_dtypes__]
    bits = ", ".join(d.removeprefix("float") for d in dtypes)
    facts = [
        ["Name", f"``architecture: {{name: {name}}}``"],
        ["Precision", f"{', '.join(dtypes)} (``base_precision``: {bits})"],
        ["Devices", ", ".join(model.__supported_devices__) + " (in order of preference)"],
        ["Outputs", _outputs(model)],
    ]
    references = getattr(model.__default_metadata__, "references", {}) or {}
    for kind, links in references.items():
        facts.append([f"References ({kind})", "\n".join(f"| {link}" for link in links)])
    return facts


def _outputs(model: type) -> str:
    if issubclass(model, EnergyModel):
        return (
            (
                "Energies: ``energy`` and variants ``energy/<name>``, one per target of the "
                "training set, per structure or per atom. Forces and stress are exact gradients "
                "of the energy (conservative), computed by the engine"
            )
            + _direct_note(model)
            + _generic_note(model)
        )
    return "See the description above."


def _direct_note(model: type) -> str:
    if model.per_atom_energies_and_direct is EnergyModel.per_atom_energies_and_direct:
        return "; there is no direct (non-conservative) forces head."
    return (
        "; optionally also directly, by separate heads (``non_conservative_force`` per atom, "
        "``non_conservative_stress`` per structure; see ``direct_forces`` below)."
    )


def _generic_note(model: type) -> str:
    if model.per_atom_features is EnergyModel.per_atom_features:
        return " Generic targets (``mtt::<name>``) are not available."
    return (
        " Generic targets ``mtt::<name>``: scalars, vectors and symmetric rank-2 tensors, per "
        "structure (sum, mean or max over atoms) or per atom; see :doc:`/how-to/generic-targets`."
    )


def _defaults_block(name: str, model_hypers: type, train_hypers: type) -> str:
    try:
        section = {"model": to_dict(model_hypers()), "training": to_dict(train_hypers())}
    except TypeError:  # a hyper without default: no complete example to show
        return ""
    example = {"architecture": {"name": name, **section}, "training_set": "data.xyz"}
    body = textwrap.indent(as_yaml(example, flow=False), "   ")
    return "\n".join(
        [
            heading("Every default", "-"),
            "The architecture section with every key at its default, to copy and edit:\n",
            ".. code-block:: yaml\n",
            body + "\n",
        ]
    )


def architectures_index() -> str:
    names = architectures.names()
    rows = [[f":doc:`{n}`", _first_line(inspect.getdoc(architectures.load(n)))] for n in names]
    return "\n".join(
        [
            ".. This page is generated by docs/generate.py from the folders of architectures/.\n",
            heading("Architectures", "="),
            "Each architecture is one folder of ``architectures/``; ``architecture.name`` picks "
            "it.\n",
            list_table(["Name", "Description"], rows, "20 80"),
            ".. toctree::\n   :hidden:\n\n" + "".join(f"   {n}\n" for n in names),
        ]
    )


def _first_line(doc: Optional[str]) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


# ---------------------------------------------------------------------------------- command line


def subcommands(parser: argparse.ArgumentParser) -> Dict[str, Tuple[str, argparse.ArgumentParser]]:
    """``{name: (one-line help, parser)}`` of the sub-commands of ``parser``."""
    result = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                result[name] = (helps.get(name, ""), sub)
    return result


def invocation(action: argparse.Action) -> str:
    """How an argument is written: ``-o OUTPUT, --output OUTPUT``, ``options``."""
    if not action.option_strings:
        return action.metavar or action.dest
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = action.metavar or action.dest.upper()
    return ", ".join(f"{flag} {metavar}" for flag in action.option_strings)


def _arguments(parser: argparse.ArgumentParser) -> str:
    items = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        text = (action.help or "").replace("%(prog)s", parser.prog)
        if "%(" in text:
            text = text % {**vars(action), "prog": parser.prog}
        if isinstance(action, argparse._AppendAction):
            text += " (may be given several times)"
        items.append(f"``{invocation(action)}``\n    {text}\n")
    return "\n".join(items)


def _usage(parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = functools.partial(argparse.HelpFormatter, width=88)
    usage = parser.format_usage().strip()
    return ".. code-block:: text\n\n" + textwrap.indent(usage, "   ") + "\n"


def cli_reference() -> str:
    """The page of the ``mtt`` command and each sub-command, read from its parser."""
    parser = build_parser()
    parts = [
        ".. This page is generated by docs/generate.py from mtt.cli.build_parser(): edit the\n"
        "   help texts in src/mtt/cli/, not this file.\n",
        heading("Command line", "="),
        f"``{parser.prog}``: {parser.description}\n",
        _usage(parser),
        heading("Options of every command", "-"),
        "Given before the sub-command, e.g. ``mtt --debug train options.yaml``.\n",
        _arguments(parser),
    ]
    for name, (summary, sub) in subcommands(parser).items():
        parts.append(heading(f"mtt {name}", "-"))
        if summary:
            parts.append(summary[0].upper() + summary[1:] + ".\n")
        if sub.description:
            parts.append(inspect.cleandoc(sub.description) + "\n")
        parts += [_usage(sub), _arguments(sub)]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------- developer guide


def _python_files(root: str, private: bool = False) -> Iterator[Tuple[str, str]]:
    """``(dotted suffix, path)`` of every (public, unless ``private``) module under ``root``."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")) and d != "tests")
        for file in sorted(f for f in files if f.endswith(".py")):
            if file.startswith("_") and file != "__init__.py" and not private:
                continue  # private modules (and __main__) are not part of the layout
            relative = os.path.relpath(os.path.join(folder, file), root)[:-3]
            parts = relative.split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), os.path.join(folder, file)


def _docstring(path: str) -> Optional[str]:
    with open(path, encoding="utf-8") as file:
        return ast.get_docstring(ast.parse(file.read()))


def modules_table() -> str:
    """Every module of ``mtt`` (architectures aside) with the first line of its docstring."""
    rows = []
    for suffix, path in _python_files(os.path.dirname(importlib.util.find_spec("mtt").origin)):
        if suffix.split(".")[0] == "architectures":
            continue
        name = join("mtt", suffix) if suffix else "mtt"
        rows.append([f"``{name}``", _first_line(_docstring(path))])
    return list_table(["Module", "What it holds"], rows, "30 70")


def architecture_tests_table() -> str:
    """The class attributes and tests of ``mtt.testing.ArchitectureTests`` with their
    docstrings, read from the source (importing it would need pytest)."""
    node = _architecture_tests_class()
    attributes, tests = [], []
    for item, following in zip(node.body, node.body[1:] + [None]):
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            doc = following.value.value if _is_string(following) else ""
            attributes.append([f"``{item.target.id}``", " ".join(doc.split())])
        elif isinstance(item, ast.FunctionDef) and item.name.startswith("test_"):
            tests.append([f"``{item.name}``", " ".join((ast.get_docstring(item) or "").split())])
    return "\n".join(
        [
            list_table(["Class attribute", "Meaning"], attributes, "30 70"),
            list_table(["Test", "What it checks (and what a failure means)"], tests, "30 70"),
        ]
    )


def _architecture_tests_class() -> ast.ClassDef:
    root = os.path.dirname(importlib.util.find_spec("mtt").origin)
    for _, path in _python_files(os.path.join(root, "testing"), private=True):
        with open(path, encoding="utf-8") as file:
            for node in ast.parse(file.read()).body:
                if isinstance(node, ast.ClassDef) and node.name == "ArchitectureTests":
                    return node
    raise LookupError("no class ArchitectureTests in mtt/testing")


def _is_string(node: Optional[ast.AST]) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


# ---------------------------------------------------------------------------------- writing


def pages() -> Dict[str, str]:
    """Every generated file, by path relative to :data:`GENERATED`."""
    result = {
        "options.rst": options_reference(),
        "cli.rst": cli_reference(),
        os.path.join("architectures", "index.rst"): architectures_index(),
        # fragments included by the developer guide (not pages of their own)
        "modules.inc": modules_table(),
        "architecture-tests.inc": architecture_tests_table(),
    }
    for name in architectures.names():
        result[os.path.join("architectures", f"{name}.rst")] = architecture_page(name)
    return result


def write_all(directory: str) -> List[str]:
    """Write every page under ``directory``; files whose text did not change are left alone
    (so that Sphinx does not rebuild them), files no longer generated are removed."""
    written = []
    generated = pages()
    for relative, text in generated.items():
        path = os.path.join(directory, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        old = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as file:
                old = file.read()
        if old != text:
            with open(path, "w", encoding="utf-8") as file:
                file.write(text)
        written.append(path)
    for folder, _, files in os.walk(directory):
        for file in files:
            path = os.path.join(folder, file)
            if path not in written:
                os.remove(path)
    return written


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    for path in write_all(os.path.join(here, GENERATED)):
        print(path)

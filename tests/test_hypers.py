"""Tests of mtt.hypers: dict <-> dataclass conversion, messages, docs and overrides."""

# String annotations on purpose: parse() must resolve them with typing.get_type_hints.
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mtt.errors import OptionsError
from mtt.hypers import (
    OptionsLoader,
    apply_overrides,
    describe_type,
    field_docs,
    parse,
    to_dict,
)


@dataclass
class Scheduler:
    """A learning-rate schedule."""

    factor: float = 0.5
    """Multiply the learning rate by this on a plateau."""
    patience: int = 10


@dataclass
class Training:
    num_epochs: int = 100
    """Number of passes over the training set."""
    batch_size: int = 16
    """Structures per batch."""
    learning_rate: float = 1e-3
    """Initial learning rate.

    Second paragraph."""
    loss: Literal["mse", "mae", "huber"] = "mse"
    shuffle: bool = True
    checkpoint: Optional[str] = None
    layers: List[int] = field(default_factory=lambda: [32, 32])
    weights: Dict[str, float] = field(default_factory=dict)
    scheduler: Union[float, Scheduler] = 0.5
    extra: Any = None

    def validate(self) -> List[Tuple[str, str]]:
        problems = []
        if not self.learning_rate > 0:
            problems.append(("learning_rate", f"must be positive, got {self.learning_rate}"))
        return problems


@dataclass
class Model:
    cutoff: float = 5.0
    width: int = 64


@dataclass
class Architecture:
    name: str
    model: Model = field(default_factory=Model)
    training: Training = field(default_factory=Training)

    def validate(self) -> List[Tuple[str, str]]:
        if self.name == "legacy" and self.model.width != 64:
            return [("", "'legacy' needs model.width 64")]
        return []


@dataclass
class Options:
    architecture: Architecture
    training_set: str
    seed: int = 0


@dataclass
class Base:
    a: int = 1
    """Doc of a."""
    b: str = "x"
    c: float = 0.0
    """Doc of c in the base."""


@dataclass
class Derived(Base):
    c: float = 2.0
    """Doc of c in the subclass."""
    d: bool = False
    """Doc of d."""


def problems_of(cls, data, path=""):
    with pytest.raises(OptionsError) as info:
        parse(cls, data, path)
    return info.value.problems


def training_problems(section):
    return problems_of(
        Options, {"architecture": {"name": "x", "training": section}, "training_set": "t"}
    )


# ----------------------------------------------------------------------------- parse


def test_defaults():
    options = parse(Options, {"architecture": {"name": "soap"}, "training_set": "data.xyz"})
    assert options == Options(Architecture("soap"), "data.xyz")
    assert options.architecture.training.layers == [32, 32]
    assert parse(Training, None) == Training()
    assert parse(Training, {}) == Training()


def test_null_section_means_defaults():
    options = parse(Options, {"architecture": {"name": "x", "model": None}, "training_set": "t"})
    assert options.architecture.model == Model()


def test_values_are_converted():
    training = parse(
        Training,
        {
            "learning_rate": 1,
            "layers": (1, 2),
            "weights": {"energy": 1, "forces": 0.5},
            "scheduler": {"factor": 0.1},
            "checkpoint": "a.ckpt",
            "loss": "huber",
        },
    )
    assert training.learning_rate == 1.0 and type(training.learning_rate) is float
    assert training.layers == [1, 2]
    assert training.weights == {"energy": 1.0, "forces": 0.5}
    assert type(training.weights["energy"]) is float
    assert training.scheduler == Scheduler(factor=0.1)
    assert training.checkpoint == "a.ckpt"
    assert training.loss == "huber"
    assert parse(Training, {"scheduler": 2}).scheduler == 2.0


def test_yaml_exponent_strings_are_numbers():
    data = yaml.safe_load("learning_rate: 1e-3")
    assert data == {"learning_rate": "1e-3"}  # the YAML 1.1 pitfall this guards against
    assert parse(Training, data).learning_rate == 0.001
    assert (
        "must be a finite number, got 'fast' (str)"
        in problems_of(Training, {"learning_rate": "fast"})[0]
    )


def test_unknown_key_did_you_mean():
    assert training_problems({"num_epoch": 3}) == [
        "unknown option 'architecture.training.num_epoch'; did you mean 'num_epochs'?"
    ]


def test_unknown_key_lists_valid_keys():
    (problem,) = problems_of(Model, {"zzz": 1}, "architecture.model")
    assert (
        problem
        == "unknown option 'architecture.model.zzz'; valid options here are 'cutoff', 'width'"
    )
    (problem,) = problems_of(Model, {3: 1})
    assert problem.startswith("unknown option '3'")


def test_wrong_type_message():
    assert training_problems({"batch_size": "ten"}) == [
        "option 'architecture.training.batch_size' must be an integer, got 'ten' (str)"
    ]


def test_missing_required():
    assert problems_of(Options, {"architecture": {}}) == [
        "missing required option 'architecture.name'",
        "missing required option 'training_set'",
    ]
    assert problems_of(Options, None) == [
        "missing required option 'architecture'",
        "missing required option 'training_set'",
    ]


def test_section_must_be_a_mapping():
    assert training_problems(3) == ["option 'architecture.training' must be a mapping, got 3 (int)"]
    assert problems_of(Options, [1, 2]) == ["the options must be a mapping, got [1, 2] (list)"]


def test_bool_and_int_are_kept_apart():
    assert training_problems({"num_epochs": True}) == [
        "option 'architecture.training.num_epochs' must be an integer, got True (bool)"
    ]
    assert training_problems({"num_epochs": 10.0}) == [
        "option 'architecture.training.num_epochs' must be an integer, got 10.0 (float)"
    ]
    assert training_problems({"shuffle": 1}) == [
        "option 'architecture.training.shuffle' must be true or false, got 1 (int)"
    ]
    assert training_problems({"shuffle": "yes"}) == [
        "option 'architecture.training.shuffle' must be true or false, got 'yes' (str)"
    ]
    assert training_problems({"learning_rate": False}) == [
        "option 'architecture.training.learning_rate' must be a finite number, got False (bool)"
    ]


def test_literal_message():
    assert training_problems({"loss": "mes"}) == [
        "option 'architecture.training.loss' must be one of 'mse', 'mae', 'huber', "
        "got 'mes' (str); did you mean 'mse'?"
    ]


def test_yaml_off_is_the_word_off_where_it_is_a_choice():
    """YAML 1.1 reads an unquoted `off` as false: `distributed: off`, as the documentation
    writes it, was refused as a bool."""

    @dataclass
    class Launch:
        distributed: Literal["auto", "off"] = "auto"
        switch: Literal["on", "off"] = "on"
        loss: Literal["mse", "mae"] = "mse"

    parsed = parse(Launch, yaml.safe_load("distributed: off\nswitch: on"))
    assert (parsed.distributed, parsed.switch) == ("off", "on")
    with pytest.raises(OptionsError, match="must be one of 'auto', 'off', got True"):
        parse(Launch, {"distributed": True})  # no word for true among the choices
    with pytest.raises(OptionsError, match="must be one of 'mse', 'mae', got False"):
        parse(Launch, {"loss": False})


def test_list_messages():
    assert training_problems({"layers": [1, "a", 3.5]}) == [
        "option 'architecture.training.layers[1]' must be an integer, got 'a' (str)",
        "option 'architecture.training.layers[2]' must be an integer, got 3.5 (float)",
    ]
    assert training_problems({"layers": 3}) == [
        "option 'architecture.training.layers' must be a list of integers, got 3 (int)"
    ]


def test_dict_messages():
    assert training_problems({"weights": {"energy": "x", 1: 2.0}}) == [
        "option 'architecture.training.weights.energy' must be a finite number, got 'x' (str)",
        "option 'architecture.training.weights' has the key 1 (int); keys must be strings",
    ]


def test_union_messages():
    assert training_problems({"scheduler": "fast"}) == [
        "option 'architecture.training.scheduler' must be a finite number or a mapping, "
        "got 'fast' (str)"
    ]
    # Only the dataclass member can hold a mapping, so its detailed problem is reported.
    assert training_problems({"scheduler": {"factr": 0.1}}) == [
        "unknown option 'architecture.training.scheduler.factr'; did you mean 'factor'?"
    ]
    assert training_problems({"scheduler": None}) == [
        "option 'architecture.training.scheduler' must be a finite number or a mapping, "
        "got None (NoneType); or leave the key out for its default, 0.5"
    ]


def test_optional():
    assert parse(Training, {"checkpoint": None}).checkpoint is None
    assert problems_of(Training, {"checkpoint": 3}) == [
        "option 'checkpoint' must be a string or null, got 3 (int)"
    ]


def test_long_values_are_truncated():
    (problem,) = problems_of(Model, {"width": "w" * 500})
    assert problem.startswith("option 'width' must be an integer, got 'wwww")
    assert "..." in problem and problem.endswith("(str)")
    assert len(problem) < 120


def test_all_problems_are_reported_at_once():
    data = {
        "architecture": {"name": 5, "model": {"cutof": 4.0}, "training": {"batch_size": "ten"}},
        "seed": "0",
    }
    with pytest.raises(OptionsError) as info:
        parse(Options, data)
    assert info.value.problems == [
        "option 'architecture.name' must be a string, got 5 (int)",
        "unknown option 'architecture.model.cutof'; did you mean 'cutoff'?",
        "option 'architecture.training.batch_size' must be an integer, got 'ten' (str)",
        "missing required option 'training_set'",
        "option 'seed' must be an integer, got '0' (str)",
    ]
    assert len(str(info.value).splitlines()) == 5


def test_validate_hook():
    assert training_problems({"learning_rate": -1.0}) == [
        "option 'architecture.training.learning_rate' must be positive, got -1.0"
    ]
    # A section-level problem (empty field name) is reported on the section itself.
    data = {"architecture": {"name": "legacy", "model": {"width": 8}}, "training_set": "t"}
    assert problems_of(Options, data) == ["option 'architecture' 'legacy' needs model.width 64"]
    # Top-level path prefix from the caller.
    assert problems_of(Training, {"learning_rate": 0}, "architecture.training") == [
        "option 'architecture.training.learning_rate' must be positive, got 0.0"
    ]


def test_validate_hook_runs_on_the_rest_after_type_errors():
    # The hook runs with the default in place of the option that failed to convert, and only
    # what does not involve that option is reported.
    assert training_problems({"learning_rate": -1.0, "batch_size": "ten"}) == [
        "option 'architecture.training.batch_size' must be an integer, got 'ten' (str)",
        "option 'architecture.training.learning_rate' must be positive, got -1.0",
    ]


def test_input_is_not_mutated_or_aliased():
    data = {"layers": [1, 2], "extra": {"a": [1]}, "weights": {"e": 1}}
    before = yaml.safe_dump(data)
    training = parse(Training, data)
    training.layers.append(3)
    training.extra["a"].append(2)
    assert yaml.safe_dump(data) == before


def test_non_string_annotations():
    Dynamic = dataclasses.make_dataclass("Dynamic", [("n", int), ("xs", List[float], 0)])
    assert parse(Dynamic, {"n": 1, "xs": [1, 2.5]}) == Dynamic(1, [1.0, 2.5])
    assert problems_of(Dynamic, {"n": 1.5}) == ["option 'n' must be an integer, got 1.5 (float)"]


def test_parse_requires_a_dataclass():
    with pytest.raises(TypeError):
        parse(dict, {})


# ----------------------------------------------------------------------------- to_dict


def test_to_dict_round_trip():
    options = parse(
        Options,
        {
            "architecture": {
                "name": "x",
                "training": {"scheduler": {"patience": 3}, "layers": (4,), "extra": {"k": [1]}},
            },
            "training_set": "t",
            "seed": 7,
        },
    )
    data = to_dict(options)
    assert data["architecture"]["training"]["scheduler"] == {"factor": 0.5, "patience": 3}
    assert data["architecture"]["training"]["layers"] == [4]
    assert data["architecture"]["model"] == {"cutoff": 5.0, "width": 64}
    assert yaml.safe_load(yaml.safe_dump(data)) == data
    assert parse(Options, data) == options
    assert parse(Options, yaml.safe_load(yaml.safe_dump(data))) == options


def test_to_dict_requires_an_instance():
    with pytest.raises(TypeError):
        to_dict(Options)
    with pytest.raises(TypeError):
        to_dict({"a": 1})


# ----------------------------------------------------------------------------- field_docs


def test_field_docs():
    docs = field_docs(Training)
    assert list(docs) == [f.name for f in dataclasses.fields(Training)]
    assert docs["num_epochs"] == "Number of passes over the training set."
    assert docs["learning_rate"] == "Initial learning rate.\n\nSecond paragraph."
    assert docs["loss"] == ""
    assert field_docs(Scheduler) == {
        "factor": "Multiply the learning rate by this on a plateau.",
        "patience": "",
    }


def test_field_docs_inheritance():
    assert field_docs(Derived) == {
        "a": "Doc of a.",
        "b": "",
        "c": "Doc of c in the subclass.",
        "d": "Doc of d.",
    }


def test_field_docs_without_source():
    Dynamic = dataclasses.make_dataclass("Dynamic", [("n", int)])
    assert field_docs(Dynamic) == {"n": ""}


# ----------------------------------------------------------------------------- overrides


def test_an_override_replacing_a_section_says_which_keys_it_drops(caplog):
    """-r 'architecture.model={cutoff: 2.5}' dropped the file's other model keys silently."""
    data = {"architecture": {"model": {"cutoff": 4.0, "num_neurons_per_layer": 8}}}
    with caplog.at_level("WARNING", logger="mtt"):
        result = apply_overrides(data, ["architecture.model={cutoff: 2.5}"])
    assert result["architecture"]["model"] == {"cutoff": 2.5}
    assert caplog.messages == [
        "override of 'architecture.model' replaces the whole section: num_neurons_per_layer of "
        "the options file no longer apply; to change single keys, give each as -r "
        "architecture.model.cutoff=..."
    ]
    caplog.clear()
    apply_overrides(data, ["architecture.model.cutoff=2.5"])
    assert caplog.messages == []


def test_a_section_with_every_key_commented_out_takes_its_defaults():
    """``model:`` followed only by comments is null in YAML: it was refused as 'must be a
    mapping, got None' (a nested dataclass section already took its defaults)."""
    from mtt.options import ArchitectureOptions

    parsed = parse(ArchitectureOptions, {"name": "x", "model": None}, "architecture")
    assert parsed.model == {} and parsed.training == {}


@pytest.mark.parametrize(
    "text, value",
    [
        ("1:30", "1:30"),
        ("010", 10),
        ("1_000", 1000),
        ("1e-3", 1e-3),
        ("+1e5", 1e5),
        ("0x10", "0x10"),
    ],
)
def test_numbers_are_read_as_yaml_1_2_reads_them(text, value):
    """YAML 1.1 read 'seed: 1:30' as the base-60 number 90 and 010 as the octal 8: options
    changed without a word (a string now fails the type check instead)."""
    assert apply_overrides({}, [f"seed={text}"]) == {"seed": value}
    assert yaml.load(f"seed: {text}", Loader=OptionsLoader) == {"seed": value}


def test_overrides_create_nested_sections():
    data = {"architecture": {"name": "x"}, "training_set": "t"}
    result = apply_overrides(data, ["architecture.training.num_epochs=3", "seed=4"])
    assert result == {
        "architecture": {"name": "x", "training": {"num_epochs": 3}},
        "training_set": "t",
        "seed": 4,
    }
    assert data == {"architecture": {"name": "x"}, "training_set": "t"}  # not mutated
    assert apply_overrides(None, ["a.b=1"]) == {"a": {"b": 1}}
    assert apply_overrides({"a": None}, ["a.b=1"]) == {"a": {"b": 1}}


@pytest.mark.parametrize(
    "text, value",
    [
        ("3", 3),
        ("1e-3", 0.001),
        ("-2E5", -200000.0),
        ("1.5", 1.5),
        ("true", True),
        ("[1,2]", [1, 2]),
        ("mse", "mse"),
        ("null", None),
        ("", None),
        ("a=b", "a=b"),
        ("nan", "nan"),
    ],
)
def test_override_values(text, value):
    result = apply_overrides({}, [f"k={text}"])["k"]
    assert result == value and type(result) is type(value)


def test_overrides_then_parse():
    data = apply_overrides(
        {"architecture": {"name": "x"}, "training_set": "t"},
        ["architecture.training.learning_rate=1e-3", "architecture.training.layers=[8, 8]"],
    )
    training = parse(Options, data).architecture.training
    assert training.learning_rate == 0.001 and training.layers == [8, 8]


@pytest.mark.parametrize("override", ["foo", "=3", "a..b=1", "a.=1", ".a=1", " =1"])
def test_malformed_overrides(override):
    with pytest.raises(OptionsError) as info:
        apply_overrides({}, [override])
    assert info.value.problems == [
        f"malformed override '{override}'; expected the form -r key.path=value"
    ]


def test_all_bad_overrides_are_reported():
    with pytest.raises(OptionsError) as info:
        apply_overrides({}, ["foo", "ok=1", "a=[1,2", "=2"])
    problems = info.value.problems
    assert len(problems) == 3
    assert problems[1].startswith("cannot read the value of override 'a=[1,2' as YAML: ")


def test_override_with_a_key_given_twice_is_refused():
    """As in options.yaml: PyYAML alone keeps the last of two equal keys, silently."""
    override = "architecture.training.loss.weights={energy: 1.0, energy: 0.1}"
    with pytest.raises(OptionsError) as info:
        apply_overrides({}, [override])
    assert info.value.problems == [
        f"cannot read the value of override '{override}' as YAML: the key 'energy' is given "
        "twice (first at line 1); keep one of them (sections given twice are not merged)"
    ]


def test_overrides_need_a_mapping():
    with pytest.raises(OptionsError, match="the options are \\[1\\] \\(list\\), not a mapping"):
        apply_overrides([1], ["a=1"])


def test_override_into_a_non_mapping():
    with pytest.raises(OptionsError) as info:
        apply_overrides({"training_set": "data.xyz"}, ["training_set.systems.read_from=x"])
    assert info.value.problems == [
        "cannot apply override 'training_set.systems.read_from=x': 'training_set' is "
        "'data.xyz' (str), not a mapping, so it cannot hold the sub-key 'systems'"
    ]


# ----------------------------------------------------------------------------- describe_type


@pytest.mark.parametrize(
    "tp, words",
    [
        (int, "an integer"),
        (float, "a finite number"),
        (bool, "true or false"),
        (str, "a string"),
        (Any, "anything"),
        (Literal["mse", "mae", "huber"], "one of 'mse', 'mae', 'huber'"),
        (Literal[True], "true"),
        (List[float], "a list of numbers"),
        (list, "a list"),
        (Dict[str, Any], "a mapping"),
        (Dict[str, float], "a mapping from strings to numbers"),
        (Optional[str], "a string or null"),
        (Union[float, Scheduler], "a finite number or a mapping"),
        (Union[bool, str, Scheduler], "true or false, a string or a mapping"),
        (Scheduler, "a mapping"),
        (List[Scheduler], "a list of mappings"),
    ],
)
def test_describe_type(tp, words):
    assert describe_type(tp) == words


# ----------------------------------------------------------------------------- property

_keys = st.sampled_from(
    ["architecture", "name", "model", "training", "training_set", "seed", "cutoff", "width"]
    + [f.name for f in dataclasses.fields(Training)]
    + ["factor", "patience", "num_epoch"]
) | st.text(max_size=4)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.sampled_from(["mse", "1e-3", "x"])
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(_keys | st.integers(), children, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_values, st.dictionaries(_keys, _values, max_size=5)))
def test_parse_never_crashes(data):
    for cls in (Options, Training, Architecture):
        try:
            instance = parse(cls, data, "root")
        except OptionsError as error:
            assert error.problems
            assert all(isinstance(p, str) and "\n" not in p for p in error.problems)
        else:
            assert parse(cls, to_dict(instance)) == instance


_training_data = st.fixed_dictionaries(
    {},
    optional={
        "num_epochs": st.integers() | _scalars,
        "learning_rate": st.floats(min_value=1e-9, allow_infinity=False) | _scalars,
        "loss": st.sampled_from(["mse", "mae", "huber"]) | _scalars,
        "shuffle": st.booleans(),
        "checkpoint": st.none() | st.text(max_size=5),
        "layers": st.lists(st.integers(), max_size=3) | _values,
        "weights": st.dictionaries(st.text(max_size=3), st.floats(allow_nan=False), max_size=2),
        "scheduler": st.floats(allow_nan=False)
        | st.fixed_dictionaries({"patience": st.integers()}),
        "extra": _values,
    },
)


@settings(max_examples=200, deadline=None)
@given(_training_data)
def test_parse_round_trips_when_valid(data):
    try:
        training = parse(Training, data)
    except OptionsError as error:
        assert error.problems
    else:
        assert parse(Training, yaml.safe_load(yaml.safe_dump(to_dict(training)))) == training

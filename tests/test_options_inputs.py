"""Options that look plausible but mean nothing are refused before any data is read, each with
one line naming the key and saying how to fix it: target names inside the training hypers,
gradients of generic targets, the cutoff and its switch, spherical targets, binary options
files and keys given twice.
"""

from pathlib import Path

import pytest
from test_bad_input import fail, options, write_options

from mtt.api import read_options, validate_options
from mtt.errors import OptionsError

VALID_NAMES = "(valid names: 'energy', 'energy/forces', 'energy/stress')"


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working directory: options are refused before the data would be read."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def problems(raw) -> list:
    with pytest.raises(OptionsError) as error:
        validate_options(raw)
    return error.value.problems


def with_target(name: str, target: dict, **changes):
    """The tiny options with one more target in the training set."""
    raw = options(**changes)
    raw["training_set"]["targets"][name] = target
    return raw


# ------------------------------------------------------------------ target names in the hypers


def test_misspelled_loss_weights_are_refused_with_did_you_mean(work, capsys):
    write_options(options(architecture__training__loss={"weights": {"energi": 2.0, "forcs": 0}}))
    found = fail(capsys, "train", "options.yaml", count=2)
    where = "option 'architecture.training.loss.weights"
    assert found == [
        f"{where}.energi' names no target or quantity of the training set; "
        f"did you mean 'energy'? {VALID_NAMES}",
        f"{where}.forcs' names no target or quantity of the training set; "
        f"did you mean 'energy/forces'? {VALID_NAMES}",
    ]


def test_misspelled_per_structure_target_is_refused():
    found = problems(options(architecture__training__per_structure_targets=["energi"]))
    assert found == [
        "option 'architecture.training.per_structure_targets[0]' ('energi') names no energy "
        "target of the training set; did you mean 'energy'? (valid names: 'energy')"
    ]


def test_misspelled_fixed_composition_target_is_refused():
    found = problems(options(architecture__training__fixed_composition_weights={"energi": {}}))
    assert found == [
        "option 'architecture.training.fixed_composition_weights.energi' names no energy "
        "target of the training set; did you mean 'energy'? (valid names: 'energy')"
    ]


def test_declared_targets_and_quantities_are_accepted():
    weights = {"energy": 1.0, "energy/forces": 0.0, "energy/stress": 2.0, "mtt::mu": 3.0}
    raw = with_target(
        "mtt::mu",
        {"stress": False},
        architecture__training__loss={"weights": weights},
        architecture__training__per_structure_targets=["energy"],
        architecture__training__fixed_composition_weights={"energy": {"H": -1.0}},
    )
    settings = validate_options(raw)
    assert settings.train_hypers.loss.weights == weights


def test_direct_head_weights_need_direct_heads():
    weights = {"energy/direct_forces": 1.0, "energy/direct_stress": 1.0}
    raw = options(architecture__name="pet", architecture__training__loss={"weights": weights})
    raw["architecture"]["model"] = {}
    assert all("architecture.model.direct_forces: true" in p for p in problems(raw))
    raw["architecture"]["model"] = {"direct_forces": True}
    validate_options(raw)


def test_weight_of_a_gradient_that_is_turned_off_says_which_option_turns_it_off():
    raw = options(
        training_set__targets__energy__forces=False,
        architecture__training__loss={"weights": {"energy/forces": 0.0}},
    )
    [found] = problems(raw)
    assert found.startswith("option 'architecture.training.loss.weights.energy/forces' ")
    assert "'training_set.targets.energy.forces' is false" in found


def test_metatrain_keys_of_pet_and_of_the_loss_say_what_mtt_does_instead():
    """They were answered 'did you mean num_heads?' (d_head is a width) and with the list of
    the loss's keys (metatrain weighs forces inside a per-target section)."""
    raw = options(
        architecture__name="pet",
        architecture__model={"d_head": 32},
        architecture__training__loss={"energy": {"gradients": {"positions": {"weight": 10}}}},
    )
    found = problems(raw)
    assert len(found) == 2
    assert any("per-target loss sections are mtt's 'weights'" in p for p in found)
    assert any("the output heads' hidden width is d_pet here" in p for p in found)


def test_generic_targets_have_no_composition_baseline_or_per_structure_comparison():
    raw = with_target(
        "mtt::mu",
        {},
        architecture__training__per_structure_targets=["mtt::mu"],
        architecture__training__fixed_composition_weights={"mtt::mu": {"H": 1.0}},
    )
    found = problems(raw)
    assert len(found) == 2 and all("is not an energy" in p for p in found)


def test_distillation_may_weigh_the_pretrained_energies():
    """Distillation compares the pretrained model's energies (not declared here) by name."""
    finetune = {"read_from": "pretrained.ckpt", "distillation": {}}
    raw = options(
        architecture__training__finetune=finetune,
        architecture__training__loss={"weights": {"energy/old": 1.0, "energy/old/forces": 5.0}},
    )
    validate_options(raw)
    raw["architecture"]["training"]["loss"]["weights"]["energi"] = 1.0
    [found] = problems(raw)
    assert "loss.weights.energi' names no target" in found


# ------------------------------------------------------------------ gradients of generic targets


@pytest.mark.parametrize("key", ["forces", "stress", "virial"])
@pytest.mark.parametrize("value", [True, "forces", {"key": "f"}])
def test_gradients_of_a_generic_target_are_refused_in_any_form(key, value):
    found = problems(with_target("mtt::alpha", {"type": {"cartesian": {"rank": 2}}, key: value}))
    assert found == [
        f"option 'training_set.targets.mtt::alpha.{key}' is set, but only energies have "
        f"{key}; remove it"
    ]


@pytest.mark.parametrize(
    "name, target, why",
    [
        ("energy", {"reduction": "mean"}, "energies are sums"),
        ("mtt::q", {"per_atom": True, "reduction": "max"}, "per-atom targets are not reduced"),
    ],
)
def test_a_reduction_that_would_be_ignored_is_refused(name, target, why):
    assert problems(with_target(name, target)) == [
        f"option 'training_set.targets.{name}.reduction' is set, but {why}; remove it"
    ]
    validate_options(with_target(name, dict(target, reduction="sum")))  # the default: harmless


def test_metatrain_energy_quantity_on_a_generic_target_is_refused():
    """metatrain trains ``mtt::U0`` with ``quantity: energy`` as an energy (reference energies
    per element); mtt would train a bare number, ~300x worse on QM9: refused, with the name
    that makes it an energy here. Other quantities are free text."""
    target = {"quantity": "energy", "key": "U0", "unit": "Hartree", "forces": False}
    assert problems(with_target("mtt::U0", target)) == [
        "option 'training_set.targets.mtt::U0.quantity' is energy, which makes it an energy "
        "in metatrain; mtt trains energies (per-element reference energies, forces, stress) "
        "as the targets 'energy' and 'energy/<variant>': name it 'energy/U0', or remove "
        "quantity to train a generic number without reference energies"
    ]
    validate_options(with_target("mtt::U0", dict(target, quantity="dipole")))
    validate_options(with_target("energy/U0", dict(target, quantity="energy")))


def test_gradients_of_a_generic_target_may_be_false():
    validate_options(with_target("mtt::alpha", {"forces": False, "stress": False}))


# ------------------------------------------------------------------ messages name the wrong key


def test_cutoff_below_the_default_width_names_the_cutoff():
    raw = options(architecture__model={"cutoff": 0.3})
    assert problems(raw) == [
        "option 'architecture.model.cutoff' must be at least cutoff_width (0.5), got 0.3; "
        "raise it or lower 'cutoff_width'"
    ]


def test_width_above_the_default_cutoff_names_the_width():
    raw = options(architecture__model={"cutoff_width": 6.0})
    assert problems(raw) == [
        "option 'architecture.model.cutoff_width' must be at most the cutoff (5.0), got 6.0; "
        "lower it or raise 'cutoff'"
    ]


def test_negative_warmup_names_warmup_epochs():
    assert problems(options(architecture__training__warmup_epochs=-1)) == [
        "option 'architecture.training.warmup_epochs' must not be negative, got -1.0"
    ]


# ------------------------------------------------------------------ spherical targets


@pytest.mark.parametrize("irreps", [2, [{"o3_lambda": 2, "o3_sigma": 1}]])
def test_spherical_targets_are_unsupported_whatever_their_irreps(irreps):
    raw = with_target("mtt::p", {"type": {"spherical": {"irreps": irreps}}})
    [found] = problems(raw)
    assert found.startswith("option 'training_set.targets.mtt::p.type' is a spherical target")
    assert "not support" in found


# ------------------------------------------------------------------ the options file itself


@pytest.mark.parametrize("content", [b"PK\x03\x04\x00\x00\x08\x00binary", b"\x80\x81abc: 1\n"])
def test_binary_options_file_is_refused(work, capsys, content):
    Path("model.ckpt").write_bytes(content)
    message = fail(capsys, "train", "model.ckpt")
    assert message.startswith("'model.ckpt' is not a text (YAML) options file")


def test_top_level_key_given_twice_is_refused(work, capsys):
    text = "architecture:\n  name: soap_bpnn\ntraining_set: a.xyz\narchitecture:\n  name: pet\n"
    Path("options.yaml").write_text(text)
    message = fail(capsys, "train", "options.yaml")
    assert message.startswith("'options.yaml' is not valid YAML at line 4: the key ")
    assert "'architecture' is given twice (first at line 1)" in message


def test_nested_key_given_twice_is_refused(work, capsys):
    Path("options.yaml").write_text(
        "architecture:\n  name: soap_bpnn\n  model:\n    cutoff: 3.0\n    cutoff: 4.0\n"
        "training_set: a.xyz\n"
    )
    message = fail(capsys, "train", "options.yaml")
    assert "at line 5: the key 'cutoff' is given twice (first at line 4)" in message


def test_yaml_merge_keys_may_still_override(work):
    Path("options.yaml").write_text("base: &b {a: 1, b: 2}\nsection:\n  <<: *b\n  a: 3\n")
    assert read_options("options.yaml")["section"] == {"a": 3, "b": 2}


# ------------------------------------------------------------------ null units


@pytest.mark.parametrize(
    "name, fix", [("energy", "the energies' unit"), ("mtt::alpha", "the labels' unit")]
)
def test_a_null_unit_is_refused_not_taken_for_the_default(name, fix):
    """metatrain's ``unit: null`` is refused; left out, an energy's unit is eV."""
    [found] = problems(with_target(name, {"unit": None}))
    assert found.startswith(f"option 'training_set.targets.{name}.unit' is null: give {fix}")


# ------------------------------------------------------------------ metatrain's names


@pytest.mark.parametrize(
    "key, advice",
    [
        ("scale_targets", "mtt always scales each target by its spread"),
        ("atomic_baseline", "'fixed_composition_weights'"),
        ("warmup_fraction", "'warmup_epochs'"),
    ],
)
def test_metatrain_training_options_say_what_mtt_does_instead(key, advice):
    """Not a did-you-mean to an unrelated option (scale_targets -> per_structure_targets)."""
    raw = options()
    raw["architecture"]["training"][key] = 0.1
    [found] = problems(raw)
    assert found.startswith(f"unknown option 'architecture.training.{key}' (metatrain's): ")
    assert advice in found


def test_fixed_composition_weights_take_atomic_numbers_as_keys():
    """metatrain's files key the references by atomic number (YAML integers)."""
    raw = options()
    raw["architecture"]["training"]["fixed_composition_weights"] = {"energy": {6: -10.0, "H": -1.0}}
    settings = validate_options(raw)
    assert settings.train_hypers.fixed_composition_weights == {"energy": {6: -10.0, "H": -1.0}}


def test_a_finetune_section_without_a_model_means_no_fine_tuning():
    """metatrain's default training section holds finetune: {read_from: null, ...}."""
    raw = options()
    raw["architecture"]["training"]["finetune"] = {"read_from": None, "method": "full"}
    assert validate_options(raw).train_hypers.finetune is None


def test_a_wrong_type_does_not_hide_wrong_values_elsewhere():
    """Every mistake in one go: a type error used to stop the value checks of its section."""
    raw = options(seed="abc", validation_set=1.5)
    raw["architecture"]["training"].update(learning_rate="fast", num_epochs=0)
    found = problems(raw)
    assert "option 'seed' must be an integer, got 'abc' (str)" in found
    assert "option 'validation_set' must be a fraction in [0, 1), got 1.5" in found
    assert "option 'architecture.training.num_epochs' must be at least 1, got 0" in found
    assert len(found) == 4, found


def test_a_training_or_model_option_at_the_top_says_where_it_belongs():
    raw = options()
    raw["num_epochs"] = 3
    raw["cutoff"] = 4.0
    assert problems(raw) == [
        "unknown option 'num_epochs': it belongs under architecture.training "
        "(architecture.training.num_epochs)",
        "unknown option 'cutoff': it belongs under architecture.model (architecture.model.cutoff)",
    ]


def test_metatrain_loss_string_and_null_weight_decay_are_accepted():
    """metatrain writes ``loss: mse`` (the type alone) and ``weight_decay: null`` (none);
    both were refused as wrong types. A wrong loss name still names the valid ones."""
    from mtt.hypers import parse
    from mtt.training.hypers import TrainingHypers

    hypers = parse(TrainingHypers, {"loss": "mae", "weight_decay": None})
    assert hypers.loss.type == "mae" and hypers.loss.weights == {}
    assert hypers.weight_decay is None
    validate_options(options(architecture__training={"loss": "huber", "weight_decay": None}))
    assert problems(options(architecture__training={"loss": "msa"})) == [
        "option 'architecture.training.loss.type' must be one of 'mse', 'mae', 'huber', got "
        "'msa' (str); did you mean 'mse'?"
    ]


def test_a_target_reader_without_its_own_file_is_refused():
    """A target's ``reader`` applies to its ``read_from``; without one it was ignored (the
    systems' reader read the labels), where ``systems.reader`` would have been used."""
    assert problems(with_target("energy", {"unit": "kcal/mol", "reader": "extxyz"})) == [
        "option 'training_set.targets.energy.reader' is set without read_from: the labels are "
        "read from the systems' file with its reader; set 'training_set.systems.reader' "
        "instead, or name the labels' file in read_from"
    ]
    validate_options(with_target("energy", {"unit": "kcal/mol", "reader": "ase"}))


def test_a_list_of_files_as_a_set_says_how_to_combine_them(work, capsys):
    """metatrain-style several files (or sections) for one set: the type error alone left
    users guessing; the message names the command that combines them. A file pattern is
    not expanded, and says the same."""
    assert problems(options(training_set=["a.xyz", "b.xyz"], test_set=["c.xyz"])) == [
        "option 'training_set' is a list, but a set is one file, packed directory or section: "
        "combine files with 'mtt data pack a.xyz b.xyz -o training_data' (same labels and "
        "units) and give 'training_set: training_data'",
        "option 'test_set' is a list, but a set is one file, packed directory or section: "
        "combine files with 'mtt data pack a.xyz b.xyz -o test_data' (same labels and units) "
        "and give 'test_set: test_data'",
    ]
    write_options(options(training_set="part_*.xyz"))
    message = fail(capsys, "train", "options.yaml")
    assert message.endswith(
        "file patterns are not expanded: combine the files with 'mtt data pack <files> -o "
        "data' and name the directory 'data'"
    )


@pytest.mark.parametrize(
    "device, message",
    [
        ("mps", "option 'device' is 'mps', but this architecture runs on cuda, cpu (or auto)"),
        ("multi-cuda", "option 'device' must be auto, cpu, cuda or cuda:N, got 'multi-cuda'"),
        # metatrain's names: 'must be auto, cpu, cuda or cuda:N' did not say which to use
        (
            "gpu",
            "option 'device' is 'gpu' (metatrain's): here it is 'cuda' (or 'auto', the "
            "default, which takes a GPU when there is one)",
        ),
        (
            "multi-gpu",
            "option 'device' is 'multi-gpu' (metatrain's): here several GPUs are "
            "several processes: keep 'auto' and launch with 'torchrun --nproc_per_node=N -m mtt "
            "train' or srun",
        ),
    ],
)
def test_a_device_that_cannot_run_is_reported_with_the_other_options(device, message):
    """It was reported only after the data was read, alone; now with every other mistake."""
    assert problems(options(device=device, seeed=1)) == [
        "unknown option 'seeed'; did you mean 'seed'?",
        message,
    ]


@pytest.mark.parametrize(
    "training, problem",
    [
        (
            {"loss": {"type": "mse", "huber_delta": 0.1}},
            "option 'architecture.training.loss.huber_delta' is for type: huber, but the type "
            "is mse",
        ),
        (
            {"scheduler": "constant", "min_learning_rate_ratio": 0.0},
            "option 'architecture.training.min_learning_rate_ratio' is the floor of the cosine "
            "scheduler, but the scheduler is constant: remove it, or set scheduler: cosine",
        ),
        (
            {"num_epochs": 3, "warmup_epochs": 10},
            "option 'architecture.training.warmup_epochs' is 10.0, not below num_epochs (3): the "
            "learning rate would never reach learning_rate; lower it",
        ),
    ],
)
def test_settings_that_would_do_nothing_are_refused(training, problem):
    """Each ran without effect (identical runs) or without reaching its purpose (a warm-up
    longer than the run peaked at 2e-4 of the rate), without a word."""
    assert problems(options(architecture__training=training)) == [problem]


def test_a_null_length_unit_says_the_default_is_the_key_left_out():
    """metatrain's ``length_unit: null`` got only 'must be a string, got None'; as the page on
    metatrain's files says, it names the key and how to get the default."""
    raw = {
        "architecture": {"name": "soap_bpnn"},
        "training_set": {"systems": {"read_from": "data.xyz", "length_unit": None}},
    }
    with pytest.raises(OptionsError) as error:
        validate_options(raw)
    (problem,) = error.value.problems
    assert problem.startswith("option 'training_set.systems.length_unit' must be a string")
    assert problem.endswith("or leave the key out for its default, 'angstrom'")


@pytest.mark.parametrize(
    "where, key, value, hint",
    [
        ("", "print_stats", "auto", "always prints the structures and labels"),
        ("", "final_eval", True, "always reports the errors on every set"),
        ("", "wandb", {"project": "x"}, "train.csv"),
        ("training_set", "indices", [0, 1], "write the frames you want to their own file"),
        ("training_set", "extra_data", {}, "reads no extra data"),
    ],
)
def test_metatrain_top_level_and_data_set_keys_say_what_mtt_does(where, key, value, hint):
    """metatrain's print_stats, final_eval, wandb and a data set's indices and extra_data got
    a bare 'unknown option' listing the valid keys; they say what mtt does instead."""
    raw = {"architecture": {"name": "soap_bpnn"}, "training_set": {"systems": "data.xyz"}}
    (raw[where] if where else raw)[key] = value
    with pytest.raises(OptionsError) as error:
        validate_options(raw)
    (problem,) = error.value.problems
    name = f"{where}.{key}" if where else key
    assert problem.startswith(f"unknown option '{name}' (metatrain's): ")
    assert hint in problem

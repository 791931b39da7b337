"""Shared test helpers (on sys.path through pytest's ``pythonpath``)."""

# Small models keep the suite fast; tests add what they need on top.
TINY_MODEL = {
    "cutoff": 4.0,
    "max_radial": 4,
    "max_angular": 3,
    "num_hidden_layers": 2,
    "num_neurons_per_layer": 16,
}

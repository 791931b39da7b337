// Runs an exported metatomic model (`model.pt`) the way LAMMPS' `pair_style metatomic` does,
// through metatomic-torch's C++ API only, and prints energy, forces and virial as JSON.
//
//     mtt_engine_check model.pt structure.txt [ghost_margin (angstrom), default 2.0]
//
// structure.txt: n_atoms, then the cell (3 lines, one cell vector a, b, c per row), then
// n_atoms lines `atomic_number x y z`, in angstrom.
//
// LAMMPS conventions reproduced here:
// - the periodic structure becomes ONE non-periodic System (zero cell, pbc false): the local
//   atoms (wrapped into the cell) first, then ghost atoms, i.e. periodic images within
//   interaction_range + margin of the cell faces (LAMMPS' ghost shell; the margin plays the
//   role of the neighbour skin);
// - each neighbour list the model requests is computed by brute force over local + ghost
//   atoms, pairs within the cutoff, all cell shifts zero, full or half as requested; its
//   vectors x[j] - x[i] are registered for autograd with `register_autograd_neighbors`;
// - selected_atoms = the local atoms, Labels ["system", "atom"] = [[0, i] for i < n_local],
//   so the per-system energy is the energy of the local atoms only;
// - forces: -dE/dx over local + ghost atoms, ghost forces folded back onto their owners;
// - virial: strain trick, x' = x @ (I + strain) for all atoms, virial = -dE/dstrain
//   (= sum_i x_i (x) F_i over local + ghost atoms; LAMMPS' sign: positive under tension,
//   pressure = -trace(virial) / (3 V), stress = -virial / V).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <torch/script.h>
#include <torch/torch.h>

#include <metatensor/torch.hpp>
#include <metatomic/torch.hpp>

using metatomic_torch::NeighborListOptions;

struct Structure {
    std::vector<int32_t> types;
    std::vector<double> positions;  // n_atoms x 3, row major
    double cell[3][3];              // rows are the cell vectors
};

static Structure read_structure(const std::string& path) {
    std::ifstream file(path);
    if (!file) {
        throw std::runtime_error("can not open " + path);
    }
    Structure s;
    int64_t n_atoms = 0;
    file >> n_atoms;
    for (auto& row: s.cell) {
        file >> row[0] >> row[1] >> row[2];
    }
    s.types.resize(n_atoms);
    s.positions.resize(3 * n_atoms);
    for (int64_t i = 0; i < n_atoms; i++) {
        file >> s.types[i] >> s.positions[3 * i] >> s.positions[3 * i + 1] >> s.positions[3 * i + 2];
    }
    if (!file) {
        throw std::runtime_error("could not parse " + path);
    }
    return s;
}

/// Local atoms wrapped into the cell, followed by their periodic images whose fractional
/// coordinates lie within `range` (converted per direction with the distance between cell
/// faces) outside the cell. `owner[k]` is the local atom that atom k is an image of.
static void add_ghosts(const Structure& s, double range, std::vector<double>& x,
                       std::vector<int32_t>& types, std::vector<int64_t>& owner) {
    auto h = torch::from_blob(const_cast<double*>(&s.cell[0][0]), {3, 3}, torch::kFloat64).clone();
    auto h_inv = torch::linalg_inv(h);  // fractional = x @ h_inv
    auto reciprocal = h_inv.transpose(0, 1);
    int64_t n_local = static_cast<int64_t>(s.types.size());
    auto positions = torch::from_blob(const_cast<double*>(s.positions.data()), {n_local, 3}, torch::kFloat64);
    auto fractional = positions.matmul(h_inv);
    fractional = fractional - torch::floor(fractional);  // wrap, as LAMMPS does
    // width of the ghost shell in fractional units: range / (distance between faces)
    double delta[3];
    int64_t n_max[3];
    for (int k = 0; k < 3; k++) {
        delta[k] = range * reciprocal[k].norm().item<double>();
        n_max[k] = static_cast<int64_t>(std::ceil(delta[k]));
    }
    auto frac = fractional.accessor<double, 2>();
    auto add = [&](int64_t i, const double n[3]) {
        for (int c = 0; c < 3; c++) {
            double value = 0.0;
            for (int k = 0; k < 3; k++) {
                value += (frac[i][k] + n[k]) * s.cell[k][c];
            }
            x.push_back(value);
        }
        types.push_back(s.types[i]);
        owner.push_back(i);
    };
    const double zero[3] = {0.0, 0.0, 0.0};
    for (int64_t i = 0; i < n_local; i++) {
        add(i, zero);
    }
    for (int64_t na = -n_max[0]; na <= n_max[0]; na++)
    for (int64_t nb = -n_max[1]; nb <= n_max[1]; nb++)
    for (int64_t nc = -n_max[2]; nc <= n_max[2]; nc++) {
        if (na == 0 && nb == 0 && nc == 0) {
            continue;
        }
        const double n[3] = {double(na), double(nb), double(nc)};
        for (int64_t i = 0; i < n_local; i++) {
            bool inside = true;
            for (int k = 0; k < 3; k++) {
                double f = frac[i][k] + n[k];
                inside = inside && f >= -delta[k] && f < 1.0 + delta[k];
            }
            if (inside) {
                add(i, n);
            }
        }
    }
}

/// Brute-force neighbour list over all (local + ghost) atoms, as a metatomic TensorBlock
/// with zero cell shifts. `values` is computed from (a detached copy of) the positions and
/// registered for autograd, so that gradients flow to positions and strain.
static metatensor_torch::TensorBlock neighbor_list(metatomic_torch::System system, double cutoff,
                                                   bool full_list, std::vector<int64_t>& per_atom) {
    auto positions = system->positions().detach().to(torch::kFloat64).contiguous();
    auto x = positions.accessor<double, 2>();
    int64_t n = positions.size(0);
    std::vector<int32_t> samples;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = full_list ? 0 : i + 1; j < n; j++) {
            double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
            if (i == j || dx * dx + dy * dy + dz * dz >= cutoff * cutoff) {
                continue;
            }
            samples.insert(samples.end(), {int32_t(i), int32_t(j), 0, 0, 0});
            per_atom[i] += 1;
            if (!full_list) {
                per_atom[j] += 1;
            }
        }
    }
    int64_t n_pairs = static_cast<int64_t>(samples.size() / 5);
    auto sample_values = torch::from_blob(samples.data(), {n_pairs, 5}, torch::kInt32).clone();
    auto first = sample_values.index({torch::indexing::Slice(), 0}).to(torch::kInt64);
    auto second = sample_values.index({torch::indexing::Slice(), 1}).to(torch::kInt64);
    auto model_positions = system->positions().detach();
    auto vectors = model_positions.index_select(0, second) - model_positions.index_select(0, first);

    auto names = std::vector<std::string>{
        "first_atom", "second_atom", "cell_shift_a", "cell_shift_b", "cell_shift_c"};
    auto xyz = metatensor_torch::LabelsHolder::create({"xyz"}, {{0}, {1}, {2}});
    auto block = torch::make_intrusive<metatensor_torch::TensorBlockHolder>(
        vectors.reshape({n_pairs, 3, 1}),
        torch::make_intrusive<metatensor_torch::LabelsHolder>(names, sample_values),
        std::vector<metatensor_torch::Labels>{xyz},
        metatensor_torch::LabelsHolder::create({"distance"}, {{0}})
    );
    // what LAMMPS does: an autograd node from (positions, cell) to the pair vectors
    metatomic_torch::register_autograd_neighbors(system, block, /*check_consistency=*/false);
    return block;
}

int main(int argc, char** argv) {
    if (argc < 3 || argc > 4) {
        std::cerr << "usage: " << argv[0] << " model.pt structure.txt [ghost_margin]\n";
        return 2;
    }
    double margin = argc == 4 ? std::stod(argv[3]) : 2.0;
    try {
        auto model = metatomic_torch::load_atomistic_model(argv[1]);
        auto capabilities = model.run_method("capabilities").toCustomClass<metatomic_torch::ModelCapabilitiesHolder>();
        // inputs in the model's dtype; the engine works in float64 otherwise
        if (capabilities->dtype() != "float32" && capabilities->dtype() != "float64") {
            throw std::runtime_error("unsupported model dtype " + capabilities->dtype());
        }
        auto dtype = capabilities->dtype() == "float32" ? torch::kFloat32 : torch::kFloat64;
        double range = capabilities->engine_interaction_range("angstrom");

        auto structure = read_structure(argv[2]);
        int64_t n_local = static_cast<int64_t>(structure.types.size());
        std::vector<double> x;
        std::vector<int32_t> types;
        std::vector<int64_t> owner;
        add_ghosts(structure, range + margin, x, types, owner);
        int64_t n_total = static_cast<int64_t>(types.size());

        // strain trick: every position (local and ghost) goes through (I + strain)
        auto positions = torch::from_blob(x.data(), {n_total, 3}, torch::kFloat64).to(dtype).requires_grad_(true);
        auto strain = torch::zeros({3, 3}, torch::TensorOptions().dtype(dtype).requires_grad(true));
        auto system = torch::make_intrusive<metatomic_torch::SystemHolder>(
            torch::from_blob(types.data(), {n_total}, torch::kInt32).clone(),
            positions.matmul(torch::eye(3, dtype) + strain),
            torch::zeros({3, 3}, dtype),                        // no cell ...
            torch::zeros({3}, torch::TensorOptions().dtype(torch::kBool))  // ... and no pbc
        );

        // the neighbour lists the model asks for, with its cutoffs converted to angstrom
        // (`n_pairs` and `neighbors_per_atom` describe the last one, for the tests)
        std::vector<int64_t> neighbors_per_atom(n_total, 0);
        int64_t n_pairs = 0;
        for (const auto& request: model.run_method("requested_neighbor_lists").toList()) {
            auto options = request.get().toCustomClass<metatomic_torch::NeighborListOptionsHolder>();
            std::fill(neighbors_per_atom.begin(), neighbors_per_atom.end(), 0);
            auto block = neighbor_list(system, options->engine_cutoff("angstrom"),
                                       options->full_list(), neighbors_per_atom);
            n_pairs = block->values().size(0);
            system->add_neighbor_list(options, block);
        }

        // per-system energy in eV, of the local atoms only
        auto output = torch::make_intrusive<metatomic_torch::ModelOutputHolder>();
        output->set_unit("eV");
        output->set_sample_kind("system");
        auto outputs = torch::Dict<std::string, metatomic_torch::ModelOutput>();
        outputs.insert("energy", output);
        auto selected = torch::make_intrusive<metatensor_torch::LabelsHolder>(
            std::vector<std::string>{"system", "atom"},
            torch::stack({torch::zeros({n_local}, torch::kInt32), torch::arange(n_local, torch::kInt32)}, 1));
        auto options = torch::make_intrusive<metatomic_torch::ModelEvaluationOptionsHolder>("angstrom", outputs, selected);

        auto systems = std::vector<metatomic_torch::System>{system};
        auto result = model.forward({systems, options, /*check_consistency=*/true});
        auto energy_map = result.toGenericDict().at("energy").toCustomClass<metatensor_torch::TensorMapHolder>();
        auto energy = metatensor_torch::TensorMapHolder::block_by_id(energy_map, 0)->values().reshape({});
        energy.backward();

        // fold ghost forces back onto the local atoms they are images of
        auto all_forces = -positions.grad().to(torch::kFloat64);
        auto owners = torch::from_blob(owner.data(), {n_total}, torch::kInt64);
        auto forces = torch::zeros({n_local, 3}, torch::kFloat64).index_add_(0, owners, all_forces);
        auto virial = -strain.grad().to(torch::kFloat64);

        auto f = forces.accessor<double, 2>();
        auto w = virial.accessor<double, 2>();
        std::printf("{\"energy\": %.17g,\n \"n_local\": %ld, \"n_ghost\": %ld, \"n_pairs\": %ld,\n",
                    energy.item<double>(), long(n_local), long(n_total - n_local), long(n_pairs));
        std::printf(" \"neighbors_per_atom\": [");
        for (int64_t i = 0; i < n_local; i++) {
            std::printf("%s%ld", i ? ", " : "", long(neighbors_per_atom[i]));
        }
        std::printf("],\n \"forces\": [");
        for (int64_t i = 0; i < n_local; i++) {
            std::printf("%s[%.17g, %.17g, %.17g]", i ? ",\n   " : "", f[i][0], f[i][1], f[i][2]);
        }
        std::printf("],\n \"virial\": [");
        for (int k = 0; k < 3; k++) {
            std::printf("%s[%.17g, %.17g, %.17g]", k ? ", " : "", w[k][0], w[k][1], w[k][2]);
        }
        std::printf("]}\n");
    } catch (const std::exception& error) {
        std::cerr << "error: " << error.what() << "\n";
        return 1;
    }
    return 0;
}

"""The one training loop every architecture shares.

:class:`Trainer` implements :class:`mtt.abc.TrainerInterface`: it owns epochs, batching, the
loss, metrics, logging, checkpoint cadence, best-model tracking and exact restarts. An
architecture's trainer subclasses it and overrides only what differs (its hypers class, its
parameter groups or optimizer, data augmentation through ``augment``).

Restarts are exact: the shuffling of epoch ``e`` depends only on the seed and ``e``, and the
checkpoint holds the weights, the optimizer and scheduler states and the metric history, so a
resumed run ends bitwise like an uninterrupted one on the CPU.
"""

import contextlib
import copy
import csv
import hashlib
import logging
import math
import os
import signal
import threading
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..abc import CheckpointContext, TrainerInterface
from ..checkpoints import save_checkpoint, upgrade_trainer_checkpoint
from ..data.dataset import LabelledDataset
from ..errors import MttError
from ..hypers import to_dict
from ..io import atomic_path
from ..version import __version__
from . import distributed
from .batches import (
    LabelBatch,
    PreparedSet,
    batch_to,
    label_key,
    metric_target,
    quantity_kind,
    refuse_isolated_atoms,
    to_device,
    warn_far_positions,
)
from .composition import (
    fit_baseline,
    generic_normalization,
    interaction_energies,
    model_scales,
    quantity_scales,
)
from .ema import WeightAverage
from .hypers import TrainingHypers
from .loss import Loss, Metrics, residual_pair
from .metrics_log import MetricsLog
from .progress import ProgressBar
from .schedule import Plateau, make_scheduler

LOGGER = logging.getLogger("mtt")


class Trainer(TrainerInterface):
    __checkpoint_version__ = 1
    __hypers__ = TrainingHypers

    def __init__(self, hypers: TrainingHypers):
        super().__init__(hypers)
        self.seed = 0
        self.epoch = 0  # epochs completed
        self.state: Dict[str, Any] = {}  # optimizer, scheduler, scales (restored on restart)
        self.history: List[Dict[str, float]] = []
        self.best: Optional[Dict[str, Any]] = None  # {"epoch", "metric", "state_dict"}
        self.options: Dict[str, Any] = {}
        # the checkpoint of the last epoch when it was not written (see _end_epoch)
        self._unsaved: Optional[Tuple[int, Dict[str, Any]]] = None
        # fine-tuning: targets the pretrained model already had, and its weights (for L2-SP)
        self.pretrained_targets: List[str] = []
        self.ema: Optional[WeightAverage] = None
        self.plateau: Optional[Plateau] = None
        self.reference_weights: Dict[str, torch.Tensor] = {}
        # fine-tuning: the frozen pretrained model, and distillation from it (mtt.forgetting)
        self.teacher: Optional[torch.nn.Module] = None
        self.distillation: Optional[Any] = None
        self.run_dir = "."
        self.metrics_log = MetricsLog()  # TensorBoard, if installed
        self.world = distributed.World()  # the processes training together (during train())

    # --- what an architecture may override ------------------------------------------------
    def parameter_groups(self, model: torch.nn.Module) -> List[Dict[str, Any]]:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def regularization(self, model: torch.nn.Module, batch: Any = None) -> torch.Tensor:
        """Terms against forgetting added to the loss of a training ``batch`` (zero when not
        fine-tuning): L2-SP, and distillation from the pretrained model on perturbed copies
        of the batch (``finetune.distillation``)."""
        penalty = self._l2sp(model)
        if self.distillation is not None and batch is not None:
            term = self.distillation(model, batch, self.epoch)
            penalty = penalty.to(term.device) + term.to(penalty.dtype)
        return penalty

    def _l2sp(self, model: torch.nn.Module) -> torch.Tensor:
        """L2-SP: ``l2sp_weight * sum (w - w_pretrained)^2`` over the weights that train and
        exist in the pretrained model, and over the weight updates of LoRA adapters
        (``w - w_pretrained`` is then the adapter's ``scaling * B A``)."""
        from ..lora import LoRALinear

        finetune = self.hypers.finetune
        penalty = torch.zeros((), dtype=torch.float64)
        if finetune is None or finetune.l2sp_weight == 0.0 or not self.reference_weights:
            return penalty
        for name, parameter in model.named_parameters():
            reference = self.reference_weights.get(name)
            if parameter.requires_grad and reference is not None:
                if reference.shape == parameter.shape:
                    reference = reference.to(parameter.device, parameter.dtype)
                    penalty = penalty.to(parameter.device) + ((parameter - reference) ** 2).sum()
        for name, module in model.named_modules():
            reference = self.reference_weights.get(f"{name}.weight")
            if isinstance(module, LoRALinear) and reference is not None:
                if reference.shape != module.base.weight.shape:
                    continue  # an output layer grown for new targets: no pretrained value
                update = module.scaling * module.lora_b @ module.lora_a
                penalty = penalty.to(update.device) + (update**2).sum()
        return finetune.l2sp_weight * penalty

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        kind = torch.optim.AdamW if self.hypers.optimizer == "adamw" else torch.optim.Adam
        groups = self.parameter_groups(model)
        return kind(
            groups,
            lr=self.hypers.learning_rate,
            weight_decay=self.hypers.weight_decay or 0.0,
            fused=_fused_optimizer_supported(groups),
        )

    def augment(
        self, batch: Any, labels: LabelBatch, generator: torch.Generator
    ) -> Tuple[Any, LabelBatch]:
        """Data augmentation: transform each training batch and its labels before the step
        (never validation). ``generator`` is seeded per epoch, so a restart draws the same.
        Unchanged by default."""
        return batch, labels

    def predict(
        self, model, batch: Any, quantities: List[str], training: bool
    ) -> Dict[str, torch.Tensor]:
        """The model's predictions of ``quantities`` for the loss and the metrics (with a
        differentiable graph in training). The model's own by default."""
        return model.predict(batch, quantities, training=training)

    # --- the loop ---------------------------------------------------------------------------
    def train(
        self,
        model,
        dtype,
        devices,
        train_datasets: List[LabelledDataset],
        val_datasets: List[LabelledDataset],
        checkpoint_dir: str,
    ) -> None:
        device = devices[0]
        self.run_dir = checkpoint_dir
        self.world = distributed.current()
        model.to(device=device, dtype=dtype)
        quantities = _labelled_quantities(model, train_datasets[0])
        if self.epoch == 0:
            self._fit_baseline(model, train_datasets[0], quantities)
        self.refuse_other_comparison()
        loss = Loss(
            self.hypers.loss,
            quantities,
            self.state["scales"],
            set(self.hypers.per_structure_targets),
        )
        _refuse_weightless(loss, self.distillation is not None)
        train = PreparedSet(train_datasets[0], model, quantities)
        refuse_isolated_atoms(train.data, model)
        if self.epoch == 0:
            warn_far_positions(train.data, model)
        val = PreparedSet(val_datasets[0], model, quantities) if val_datasets else None
        if self.epoch == 0 and not self.pretrained_targets:
            model.fit_statistics(
                batch_to(batch, device)
                for batch, _ in train.batches(list(range(len(train))), self.hypers.batch_size)
            )
        distributed.broadcast_state(model, self.world)  # every process starts from the same model
        steps = train.count(
            list(range(len(train))), self.hypers.batch_size, self.hypers.max_atoms_per_batch
        )
        _warn_oversized(train.n_atoms, self.hypers.max_atoms_per_batch, self.world.main)
        _warn_batch_size_binds(
            train.n_atoms, self.hypers.batch_size, self.hypers.max_atoms_per_batch, self.world.main
        )
        if self.epoch == 0 and self.world.main:
            _warn_slow_average(self.hypers.ema_decay, steps * self.hypers.num_epochs)
        optimizer = self.make_optimizer(model)
        self.plateau = Plateau(self.hypers.plateau_factor, self.hypers.plateau_patience)
        scheduler = make_scheduler(optimizer, self.hypers, steps, self.plateau)
        self.ema = WeightAverage(model, self.hypers.ema_decay) if self.hypers.ema_decay else None
        if "optimizer" in self.state:
            self._restore_optimizer(optimizer, scheduler, steps)
            self._restore_average()
        self.state["steps_per_epoch"] = steps
        basis = _metric_basis(loss, val_datasets, train_datasets[0])
        self._check_comparable_metric(basis)
        if self.epoch == 0 and self.pretrained_targets and val is not None:
            self._validate_pretrained(model, loss, val, device, basis)
        end = self.hypers.num_epochs
        if self.stopped_early():  # (restored: interrupted in its final report or export)
            LOGGER.info("the run stopped early after epoch %d: finishing it", self.epoch)
            end = self.epoch
        try:
            for epoch in range(self.epoch, end):
                row = self._epoch(model, loss, train, val, optimizer, scheduler, epoch, device)
                if self._end_epoch(model, row, optimizer, scheduler):
                    break
        except KeyboardInterrupt:  # Ctrl-C, a scheduler's SIGTERM
            self._save_last_epoch()
            raise
        self._warn_worse_than_pretrained(basis)
        self.world = distributed.World()  # evaluations after training run in one process

    def _check_comparable_metric(self, basis: str) -> None:
        """The best model is the one with the lowest validation loss: a restart with other
        validation data, targets or loss weights measures another loss, so the checkpoint's
        best is no longer comparable and is chosen afresh (as early stopping's count)."""
        previous = self.state.get("metric_basis")
        if previous is not None and previous != basis and self.best is not None:
            LOGGER.warning(
                "the validation data, targets or loss differ from the checkpoint's run: its "
                "best model (epoch %d) was chosen by another loss, so the best model is chosen "
                "among the epochs of this run",
                self.best["epoch"],
            )
            self.best = None
            self.plateau.best, self.plateau.bad_epochs, self.plateau.stale = math.inf, 0, 0
        self.state["metric_basis"] = basis

    def _restore_optimizer(self, optimizer, scheduler, steps: int) -> None:
        """The optimizer's moments and the schedule's position from the checkpoint, on this
        run's schedule: the options' learning rate (the checkpoint's comes back with its
        state), at the same fraction of the epochs (steps per epoch change with the data or
        the batch size; the schedule counts this run's steps). The restored step's rate is
        the checkpoint's unless these, or num_epochs, changed, which the log then says."""
        bases = list(scheduler.base_lrs)  # the options' rates, per parameter group
        settings = [_group_settings(group) for group in optimizer.param_groups]
        optimizer.load_state_dict(self.state["optimizer"])
        _apply_group_settings(optimizer, settings)
        scheduler.load_state_dict(self.state["scheduler"])
        self.plateau.load_state_dict(self.state["plateau"])
        saved = [group["lr"] for group in optimizer.param_groups]
        scheduler.base_lrs = bases
        previous = self.state.get("steps_per_epoch", steps)  # (older checkpoints lack it)
        if previous != steps:
            scheduler.last_epoch = round(scheduler.last_epoch * steps / previous)
        for group, base, factor in zip(optimizer.param_groups, bases, scheduler.lr_lambdas):
            group["initial_lr"] = base
            group["lr"] = base * factor(scheduler.last_epoch)
        now = [group["lr"] for group in optimizer.param_groups]
        if saved and not math.isclose(now[0], saved[0], rel_tol=1e-6):
            LOGGER.info(
                "learning rate %.3g after epoch %d on this run's schedule (the checkpoint's "
                "run would go on at %.3g): learning_rate, num_epochs, the data or the batch "
                "size changed",
                now[0],
                self.epoch,
                saved[0],
            )

    def stopped_early(self) -> bool:
        """Whether the (restored) run had stopped early: its validation loss has not improved
        for ``early_stopping_patience`` epochs, so it trains no more."""
        patience = self.hypers.early_stopping_patience
        stale = self.state.get("plateau", {}).get("stale", 0)
        return patience is not None and stale >= patience

    def refuse_other_comparison(self) -> None:
        """The loss's energy scales were fitted for comparing energies per atom or per
        structure as the checkpoint's run did; another choice on restart weighed energies
        by about the squared number of atoms more (or less), without a word."""
        fitted = self.state.get("per_structure_targets")  # (older checkpoints lack it)
        now = sorted(self.hypers.per_structure_targets)
        if fitted is not None and fitted != now:
            raise MttError(
                f"option 'architecture.training.per_structure_targets' is {now}, but the run "
                f"of this checkpoint fitted its loss's scales for {fitted}; restore that "
                "setting, or start a new run (a fine-tuning run from the checkpoint's model)"
            )

    def _validate_pretrained(self, model, loss, val, device, basis: str) -> None:
        """The validation loss of the pretrained model before fine-tuning (its references
        refitted, new heads at zero): what the fine-tuned model should improve on."""
        order = list(range(len(val)))
        row = self._pass(model, loss, val, order, device, None, None, "validation")
        self.state["pretrained_validation"] = {"loss": row["validation_loss"], "basis": basis}
        LOGGER.info(
            "validation loss of the pretrained model before fine-tuning: %.6g",
            row["validation_loss"],
        )

    def _warn_worse_than_pretrained(self, basis: str) -> None:
        """A fine-tune that made the model worse on the validation set (too high a learning
        rate for the pretrained weights: pet at 1e-3 on 36 structures went from 8.9 to 47
        meV/atom) is said, not exported as an improvement without a word."""
        before = self.state.get("pretrained_validation")
        if before is None or before["basis"] != basis or self.best is None:
            return  # (compared by another loss or validation set since: not comparable)
        if self.best["metric"] > before["loss"]:
            LOGGER.warning(
                "the best fine-tuned model (epoch %d, validation loss %.6g) is worse than the "
                "pretrained model was before fine-tuning (%.6g): lower the learning rate "
                "(%g now; ten times less is a start) or train fewer weights "
                "(architecture.training.finetune.method: heads or lora)",
                self.best["epoch"],
                self.best["metric"],
                before["loss"],
                self.hypers.learning_rate,
            )

    def _restore_average(self) -> None:
        """The weight average of the checkpoint; one that ``ema_decay`` adds on restart starts
        from the restored weights, and one it removes is dropped (not kept for a later
        restart that adds it back)."""
        if self.ema is None:
            self.state.pop("ema", None)
        elif "ema" in self.state:
            self.ema.load_state_dict(self.state["ema"])
        else:
            LOGGER.info("ema_decay is new on this restart: the average starts from its weights")

    def _averaged(self, model):
        """The weight average in ``model`` while validating and keeping the best model."""
        return self.ema.applied(model) if self.ema is not None else contextlib.nullcontext()

    def _epoch(self, model, loss, train, val, optimizer, scheduler, epoch, device):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(train), generator=generator).tolist()
        row: Dict[str, float] = {
            "epoch": epoch + 1,
            "learning_rate": optimizer.param_groups[0]["lr"],
        }
        row.update(self._pass(model, loss, train, order, device, optimizer, scheduler, "train"))
        if val is not None:
            with self._averaged(model):
                row.update(
                    self._pass(
                        model, loss, val, list(range(len(val))), device, None, None, "validation"
                    )
                )
        losses = {"training": row["train_loss"]}
        if val is not None:
            losses["validation"] = row["validation_loss"]
        if not all(math.isfinite(value) for value in losses.values()):
            found = ", ".join(f"{name} {value:.6g}" for name, value in losses.items())
            raise MttError(
                f"the loss is not finite in epoch {epoch + 1} ({found}); the learning rate "
                f"({self.hypers.learning_rate}) is probably too high or some labels are wrong; "
                f"{self._last_checkpoint_note()}"
            )
        return row

    def _last_checkpoint_note(self) -> str:
        directory = os.path.join(self.run_dir, "checkpoints")
        epochs = (
            [
                int(name[6:-5])
                for name in os.listdir(directory)
                if name.startswith("epoch_") and name.endswith(".ckpt")
            ]
            if os.path.isdir(directory)
            else []
        )
        if not epochs:
            return "no checkpoint was written before this epoch"
        return f"the last good checkpoint is {directory}/epoch_{max(epochs)}.ckpt"

    def _pass(self, model, loss, data, order, device, optimizer, scheduler, prefix):
        """One pass over ``data``: optimisation steps if an optimizer is given. With several
        processes, each takes its share of every batch (``mtt.training.distributed``)."""
        training = optimizer is not None
        model.train(training)
        world = self.world
        metrics, total, count = Metrics(loss), 0.0, 0
        # without optimisation (validation): the loss of the whole pass, from its sums
        pass_sums = dict.fromkeys(loss.quantities, 0.0)
        pass_counts = dict.fromkeys(loss.quantities, 0)
        # for augment(): depends only on seed, epoch and process, differs from the shuffling's
        generator = torch.Generator().manual_seed(
            self.seed * 100_003 + self.epoch + 7_777_777 + 1_000_003 * world.rank
        )
        progress = ProgressBar(
            self.epoch + 1,
            self.hypers.num_epochs,
            len(order),
            training and self.hypers.progress_bar and world.main,
        )
        batches = data.shares(
            order, self.hypers.batch_size, self.hypers.max_atoms_per_batch, world.rank, world.size
        )
        for batch, labels, structures in batches:
            counts = self._whole_counts(loss, labels)
            # this process's part of the batch's loss (zero when it has no structure in it)
            value = torch.zeros((), dtype=torch.float64, device=device)
            if batch is not None:
                batch = batch_to(batch, device)
                labels = to_device(labels, device)
                if training:
                    batch, labels = self.augment(batch, labels, generator)
                predictions = self.predict(model, batch, loss.quantities, training)
                sums = loss.sums(predictions, labels, counts)
                value = loss.combine(sums, counts, device)
                if training:
                    share = len(labels.n_atoms) / structures
                    value = value + share * self.regularization(model, batch)
                else:
                    _accumulate(pass_sums, pass_counts, sums, loss.counts(labels))
                metrics.update(predictions, labels)
            total += float(value.detach()) * structures
            count += structures
            step_loss = self._step(model, value, optimizer, scheduler) if training else 0.0
            progress.update(structures, step_loss)
        progress.close()
        (total,) = distributed.sum_over_processes([total], world)
        metrics.sum_over_processes(world)
        row = {f"{prefix}_loss": total / max(count, 1)}
        if not training:
            row[f"{prefix}_loss"] = _pass_loss(loss, pass_sums, pass_counts, world)
        for q, values in metrics.results().items():
            for name, value in values.items():
                row[f"{prefix}_{metric_name(q, loss.per_atom(q))}_{name}"] = value
        return row

    def _whole_counts(self, loss, labels) -> Dict[str, int]:
        """The divisors of the loss's means: how many values of each quantity the whole
        batch holds, over all processes (``labels``: this process's share, or None)."""
        local = loss.counts(labels) if labels is not None else dict.fromkeys(loss.quantities, 0)
        totals = distributed.sum_over_processes(list(local.values()), self.world)
        return {q: int(n) for q, n in zip(local, totals)}

    def _step(self, model, value, optimizer, scheduler) -> float:
        """Backward, the gradients added up over the processes, clipping and the optimizer's
        step; returns the loss of the whole batch."""
        optimizer.zero_grad(set_to_none=True)
        if value.requires_grad:  # not on a process without structures in this batch
            value.backward()
        parameters = [p for p in model.parameters() if p.requires_grad]
        value = distributed.sum_gradients(parameters, value, self.world)
        if self.hypers.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.hypers.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        if self.ema is not None:
            self.ema.update(model)
        return value

    def evaluate(self, model, dataset: LabelledDataset, device) -> Dict[str, float]:
        """Loss and RMSE/MAE of ``model`` on ``dataset`` (keys ``<set name>_...``)."""
        quantities = [q for q in _labelled_quantities(model, dataset) if q in self.state["scales"]]
        loss = Loss(
            self.hypers.loss,
            quantities,
            self.state["scales"],
            set(self.hypers.per_structure_targets),
        )
        prepared = PreparedSet(dataset, model, quantities)
        return self._pass(
            model, loss, prepared, list(range(len(prepared))), device, None, None, dataset.name
        )

    def predictions(
        self, model, dataset: LabelledDataset, device
    ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """Predicted and reference values of ``dataset``, flattened, per quantity named and
        compared as in the metrics (``energy_per_atom``, ``energy/forces``): parity plots."""
        quantities = [q for q in _labelled_quantities(model, dataset) if q in self.state["scales"]]
        loss = _Recorder(
            self.hypers.loss,
            quantities,
            self.state["scales"],
            set(self.hypers.per_structure_targets),
        )
        prepared = PreparedSet(dataset, model, quantities)
        self._pass(model, loss, prepared, list(range(len(prepared))), device, None, None, "")
        return {
            metric_name(q, loss.per_atom(q)): (np.concatenate(pred), np.concatenate(ref))
            for q, (pred, ref) in loss.pairs.items()
            if pred
        }

    def _end_epoch(self, model, row, optimizer, scheduler) -> bool:
        """Bookkeeping after an epoch; True when early stopping ends the run."""
        self.epoch = int(row["epoch"])
        self.history.append(row)
        metric = row.get("validation_loss", row["train_loss"])
        if self.best is None or metric < self.best["metric"]:
            with self._averaged(model):
                state = copy.deepcopy(model.state_dict())
            self.best = {"epoch": self.epoch, "metric": metric, "state_dict": state}
        self.plateau.step(metric)
        if self.hypers.scheduler == "plateau":
            # the rate of the next step, with the scale just lowered: LambdaLR computed it at
            # the epoch's last step, so a lowered rate took effect one step (and, in
            # train.csv, one epoch) after torch's ReduceLROnPlateau rule
            for group, base, factor in zip(
                optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas
            ):
                group["lr"] = base * factor(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        self.state.update(
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            plateau=self.plateau.state_dict(),
        )
        if self.ema is not None:
            self.state["ema"] = self.ema.state_dict()
        patience = self.hypers.early_stopping_patience
        stop = patience is not None and self.plateau.stale >= patience
        last = self.epoch == self.hypers.num_epochs or stop
        if self.world.main:  # the other processes write nothing
            self._write_csv()
            self.metrics_log.write(self.run_dir, row, last)
        if self.epoch % self.hypers.log_interval == 0 or last:
            LOGGER.info(_format_row(row, model))
        if stop:
            LOGGER.info(
                "early stopping: no improvement for %d epochs (best model: epoch %d)",
                patience,
                self.best["epoch"],
            )
        if self.world.main and (self.epoch % self.hypers.checkpoint_interval == 0 or last):
            self.save_checkpoint(model, self._epoch_path(self.epoch))
            self._unsaved = None
        elif self.world.main:
            # kept in memory until the next epoch ends, written if the run is interrupted
            # before that: an interruption loses the epoch it stops, not all those since the
            # last checkpoint (up to checkpoint_interval). Replaced only once complete: an
            # interruption while copying keeps the previous epoch's
            snapshot = (self.epoch, self._snapshot(model))
            self._unsaved = snapshot
        return stop

    def _snapshot(self, model) -> Dict[str, Any]:
        """A copy of the checkpoint that training will not change: the tensors copied; the
        history's rows (never changed once written) and the best model's weights (replaced,
        never changed in place) shared, else each epoch would copy all the epochs before."""
        shared: Dict[int, Any] = {id(self.history): list(self.history)}
        if self.best is not None:
            shared[id(self.best["state_dict"])] = self.best["state_dict"]
        shared.update((id(row), row) for row in self.history)
        return copy.deepcopy(self.checkpoint(model), memo=shared)

    def _epoch_path(self, epoch: int) -> str:
        return os.path.join(self.run_dir, "checkpoints", f"epoch_{epoch}.ckpt")

    def _save_last_epoch(self) -> None:
        if self._unsaved is None:
            return
        epoch, checkpoint = self._unsaved
        with _signals_held():  # a second Ctrl-C while writing would leave nothing
            save_checkpoint(checkpoint, self._epoch_path(epoch))
        self._unsaved = None
        LOGGER.info("saved the last complete epoch (%d) before stopping", epoch)

    # --- set-up -----------------------------------------------------------------------------
    def _fit_baseline(self, model, dataset: LabelledDataset, quantities: List[str]) -> None:
        """Reference energies per element and the scales of every labelled quantity. When
        fine-tuning, pretrained targets keep their output scale, and their reference energies
        are refitted or kept as ``finetune.reference_energies`` says (difference reported)."""
        fixed_all = self.hypers.fixed_composition_weights
        old_baseline = model.baseline.detach().cpu().clone()
        carried = self._carried_targets(model, quantities)
        # what the pretrained network already predicts of each structure's energy: the
        # references are fitted to the rest (the network's per-atom energies do not average
        # to zero on new data: fitted to the raw labels, the references would move by that
        # average and fine-tuning would start worse than the pretrained model)
        interactions = interaction_energies(model, dataset, carried)
        baselines, spreads = [], {}
        for index, name in enumerate(model.target_names):
            if name not in quantities:  # no labels in this data: keep what the model has
                baselines.append(old_baseline[index].double())
                continue
            where = f"architecture.training.fixed_composition_weights.{name}"
            prior = old_baseline[index].double().numpy() if name in carried else None
            weights, spread = fit_baseline(
                dataset,
                name,
                model.atomic_types,
                fixed_all.get(name, {}),
                where,
                prior,
                interactions.get(name),
            )
            baselines.append(torch.tensor(weights))
            spreads[name] = spread
        scales = quantity_scales(
            dataset, quantities, spreads, set(self.hypers.per_structure_targets)
        )
        new_baseline = torch.stack(baselines) if baselines else old_baseline.double()
        output_scales = model.scale.detach().cpu().double().clone()
        trained = [t for t in model.target_names if t in quantities]
        fresh = model_scales(quantities, trained, scales)
        for k, name in enumerate(trained):
            if name not in carried:  # a carried output keeps the scale its network learnt
                output_scales[model.target_names.index(name)] = fresh[k]
        if self.pretrained_targets:
            # (elements absent from the new data keep their pretrained references: the fit
            # changes the prior as little as the data allows)
            # measured against the spread of per-atom energies: the loss's energy scale and
            # the output scale follow the forces where they are learnt, and are then up to
            # ~100x larger, which hid shifts of electronvolts
            energy_scales = [
                spreads[name] if spreads.get(name, 0.0) > 1e-10 else float(output_scales[i])
                for i, name in enumerate(model.target_names)
            ]
            self._report_reference_energies(
                model, old_baseline, new_baseline, torch.tensor(energy_scales), dataset
            )
            if self.hypers.finetune.reference_energies == "keep":
                keep = [i for i, t in enumerate(model.target_names) if t in carried]
                new_baseline[keep] = old_baseline[keep].double()
        model.set_baseline(new_baseline, output_scales)
        # generic targets of a pretrained model keep their normalisation; new ones get theirs
        kept = set(getattr(self.teacher, "generic_names", []))
        if any(name not in kept for name in model.generic_names):
            pairs = [
                (float(shift), float(spread))
                if name in kept
                else generic_normalization(dataset, model.dataset_info.targets[name])
                for name, shift, spread in zip(
                    model.generic_names, model.generic_shift, model.generic_scale
                )
            ]
            model.set_generic_normalization(
                torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
            )
        self.state["scales"] = scales
        self.state["per_structure_targets"] = sorted(self.hypers.per_structure_targets)
        LOGGER.info(
            "scales of the quantities: %s", ", ".join(f"{q}: {s:.4g}" for q, s in scales.items())
        )

    def _carried_targets(self, model, quantities: List[str]) -> List[str]:
        """The energy targets with labels in this data whose output comes from a pretrained
        network: the pretrained model's own, and new ones that inherit one of its heads."""
        if not self.pretrained_targets:
            return []
        finetune = getattr(self.hypers, "finetune", None)
        inherited = set(finetune.inherit_heads) if finetune is not None else set()
        return [
            name
            for name in model.target_names
            if name in quantities and (name in self.pretrained_targets or name in inherited)
        ]

    def _report_reference_energies(self, model, old, new, scales, dataset) -> None:
        from ..finetune import report_reference_energies

        refit = self.hypers.finetune.reference_energies == "refit"
        LOGGER.info(
            "reference energies of the data's elements (the pretrained ones are %s%s):",
            "replaced" if refit else "kept",
            "; fitted to the labels minus the pretrained network's energies" if refit else "",
        )
        elements = set(dataset.atomic_types)
        for line in report_reference_energies(model, old, new, scales, elements):
            LOGGER.info("  %s", line)

    def _write_csv(self) -> None:
        path = os.path.join(self.run_dir, "train.csv")
        columns = list(dict.fromkeys(key for row in self.history for key in row))
        # replaced in one step: a run stopped while writing (Ctrl-C) keeps the previous file,
        # where rewriting in place could leave it empty and 'mtt plot' with nothing to draw
        with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.history)

    # --- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, model, path) -> None:
        save_checkpoint(self.checkpoint(model), str(path))

    def checkpoint(self, model) -> Dict[str, Any]:
        """What :meth:`save_checkpoint` writes (the tensors are the live ones)."""
        checkpoint = model.get_checkpoint()
        checkpoint.update(
            mtt_version=__version__,
            trainer_checkpoint_version=self.__checkpoint_version__,
            train_hypers=to_dict(self.hypers),
            best_model_state_dict=self.best["state_dict"] if self.best else None,
            trainer_state={
                "epoch": self.epoch,
                "seed": self.seed,
                "history": self.history,
                "best_epoch": self.best["epoch"] if self.best else 0,
                "best_metric": self.best["metric"] if self.best else math.inf,
                **self.state,
            },
            options=self.options,
        )
        return checkpoint

    @classmethod
    def upgrade_checkpoint(cls, checkpoint: Dict[str, Any]) -> Dict[str, Any]:
        return upgrade_trainer_checkpoint(cls, checkpoint)

    @classmethod
    def load_checkpoint(
        cls, checkpoint: Dict[str, Any], hypers: TrainingHypers, context: CheckpointContext
    ) -> "Trainer":
        trainer = cls(hypers)
        if context != "restart":
            return trainer
        checkpoint = cls.upgrade_checkpoint(checkpoint)
        state = dict(checkpoint["trainer_state"])
        trainer.epoch = int(state.pop("epoch"))
        trainer.seed = int(state.pop("seed"))
        trainer.history = list(state.pop("history"))
        best_epoch, best_metric = state.pop("best_epoch"), state.pop("best_metric")
        if checkpoint.get("best_model_state_dict") is not None:
            trainer.best = {
                "epoch": best_epoch,
                "metric": best_metric,
                "state_dict": checkpoint["best_model_state_dict"],
            }
        if state.pop("best_weights", False) and best_epoch != trainer.epoch:
            LOGGER.warning(
                "this checkpoint holds the run's best weights (epoch %d) with the optimizer "
                "of its last epoch (%d): training goes on from that mix; to continue the run "
                "as it was, restart from its checkpoints/epoch_%d.ckpt",
                best_epoch,
                trainer.epoch,
                trainer.epoch,
            )
        trainer.state = state
        return trainer


def _metric_basis(loss: Loss, val_datasets, train: LabelledDataset) -> str:
    """What the best-model metric depends on, as a digest: the loss (quantities, weights,
    scales) and the validation structures and labels (without a validation set, the training
    loss, of which the training set's size stands for the data: hashing a large training set
    would cost a pass over it)."""
    digest = hashlib.sha256()
    settings = {q: (loss.weights[q], loss.scales.get(q), loss.per_atom(q)) for q in loss.quantities}
    # (the validation loss is a mean over the whole pass: a checkpoint's best before that
    # was a mean of batch means, not comparable)
    digest.update(
        repr((sorted(settings.items()), loss.hypers.type, loss.hypers.huber_delta)).encode()
        + b"pass mean"
    )
    if not val_datasets:
        digest.update(f"training set of {len(train)} structures".encode())
        return digest.hexdigest()
    for atoms, labels in val_datasets[0]:
        digest.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
        digest.update(np.round(np.asarray(atoms.positions, dtype=np.float64), 6).tobytes())
        for key in sorted(labels):
            digest.update(key.encode())
            digest.update(np.round(np.asarray(labels[key], dtype=np.float64), 8).tobytes())
    return digest.hexdigest()


def _labelled_quantities(model, dataset: LabelledDataset) -> List[str]:
    """The model's quantities that this data labels (others are kept, not trained),
    including those of direct heads (``energy/direct_forces``, labelled by ``energy/forces``)."""
    quantities = [q for t in model.dataset_info.targets.values() for q in t.quantities]
    if hasattr(model, "direct_quantities"):
        quantities += model.direct_quantities()
    return [q for q in quantities if any(label_key(q) in labels for labels in dataset.labels)]


class _Recorder(Loss):
    """The loss, keeping the predicted and reference values it compares."""

    def __init__(self, *args):
        super().__init__(*args)
        self.pairs: Dict[str, Tuple[list, list]] = {q: ([], []) for q in self.quantities}

    def sums(
        self, predictions: Dict[str, torch.Tensor], labels: LabelBatch, counts: Dict[str, int]
    ) -> Dict[str, torch.Tensor]:
        for q, (predicted, reference) in self.pairs.items():
            pred, ref = residual_pair(q, predictions[q].detach(), labels, self.per_atom(q))
            predicted.append(pred.cpu().numpy().ravel())
            reference.append(ref.cpu().numpy().ravel())
        return super().sums(predictions, labels, counts)


def _fused_optimizer_supported(groups: List[Dict[str, Any]]) -> bool:
    """Whether Adam can update all parameters in one fused kernel per tensor (torch >= 2.4 on
    CPUs and CUDA; floating-point parameters only). Same update as torch's default loop over
    parameters, which launches ~12 operations per tensor: on pet's ~80 tensors that loop took
    25 ms per step on a 2-core CPU, fused 6 ms: ~5 % of an ethanol epoch."""
    parameters = [p for group in groups for p in group["params"]]
    return bool(parameters) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters
    )


def _warn_oversized(n_atoms: List[int], max_atoms: Optional[int], main: bool) -> None:
    """Say when ``max_atoms_per_batch`` is below some structures' size: each of those makes a
    batch of its own, which is legal but usually not what the cap was set for."""
    if max_atoms is None or not main:
        return
    larger = [n for n in n_atoms if n > max_atoms]
    if larger:
        LOGGER.warning(
            "architecture.training.max_atoms_per_batch is %d, but %d training structure%s "
            "more atoms (up to %d): each of them is a batch of its own; raise "
            "max_atoms_per_batch to batch them with others",
            max_atoms,
            len(larger),
            " has" if len(larger) == 1 else "s have",
            max(larger),
        )


def _warn_batch_size_binds(
    n_atoms: List[int], batch_size: int, max_atoms: Optional[int], main: bool = True
) -> None:
    """Say when ``batch_size`` structures of the typical size stay below
    ``max_atoms_per_batch``: the atom cap is then never reached. metatrain ignores
    ``batch_size`` when an atom cap is set, so its files give a cap and leave the batch size
    at its default, and would train with batches of 8 structures here without a word."""
    if max_atoms is None or not n_atoms or not main:
        return
    typical = float(np.median(n_atoms))
    if batch_size * typical < max_atoms:
        LOGGER.warning(
            "architecture.training.max_atoms_per_batch is %d, but batch_size %d structures of "
            "~%d atoms make ~%d: batches stop at batch_size (metatrain ignores batch_size when "
            "max_atoms_per_batch is set, mtt applies both); raise batch_size (e.g. to %d) to "
            "fill batches up to the atom cap",
            max_atoms,
            batch_size,
            round(typical),
            round(batch_size * typical),
            max(batch_size + 1, int(max_atoms // typical)),
        )


def _accumulate(sums: Dict[str, float], counts: Dict[str, int], batch, batch_counts) -> None:
    for q, value in batch.items():
        sums[q] += float(value.detach())
    for q, n in batch_counts.items():
        counts[q] += n


def _pass_loss(loss: Loss, sums: Dict[str, float], counts: Dict[str, int], world) -> float:
    """The loss of a whole pass over all processes: each quantity's mean over every value of
    the pass, not a mean of batch means (which moved with the batch size and, for a partly
    labelled quantity, with which batches held its labels)."""
    names = list(sums)
    values = [sums[q] for q in names] + [float(counts[q]) for q in names]
    totals = distributed.sum_over_processes(values, world)
    summed = dict(zip(names, totals[: len(names)]))
    numbers = {q: int(n) for q, n in zip(names, totals[len(names) :])}
    return float(loss.combine(summed, numbers, "cpu"))


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C and SIGTERM wait until the block ends (the process is stopping already)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, lambda *_: None) for number in held}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _group_settings(group: Dict[str, Any]) -> Dict[str, Any]:
    """An optimizer group's settings from the options (weight decay, betas, eps, ...); the
    learning rate is the schedule's."""
    return {k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}


def _apply_group_settings(optimizer, settings: List[Dict[str, Any]]) -> None:
    """The options' settings over a restored checkpoint's (``load_state_dict`` brings the
    checkpoint's back: a changed weight_decay was silently ignored), saying what changed."""
    for group, own in zip(optimizer.param_groups, settings):
        changed = sorted(k for k, v in own.items() if group.get(k) != v)
        if changed:
            LOGGER.info(
                "optimizer settings changed since the checkpoint: %s",
                ", ".join(f"{k} {group.get(k)} -> {own[k]}" for k in changed),
            )
        group.update(own)


def _warn_slow_average(decay: Optional[float], steps: int) -> None:
    """The averaged weights (validated, kept and exported) start from the initial ones and
    still hold ``decay ** steps`` of them at the end of the run."""
    if decay is None or steps < 1:
        return
    initial = decay**steps
    if initial > 0.1:
        LOGGER.warning(
            "architecture.training.ema_decay is %g: after the %d steps of this run the "
            "averaged weights, which are validated and exported, still hold %.0f%% of the "
            "untrained initial weights; lower it to %.4g or less",
            decay,
            steps,
            100 * initial,
            0.1 ** (1 / steps),
        )


def metric_name(quantity: str, per_atom: bool) -> str:
    """``energy_per_atom`` for energies compared per atom, else the quantity's name."""
    return f"{quantity}_per_atom" if per_atom and quantity_kind(quantity) == "energy" else quantity


def quantity_unit(quantity: str, model) -> str:
    """The unit of a metric's quantity (``energy_per_atom``, ``energy/direct_forces``,
    ``mtt::dipole``, ...) for ``model``'s targets and length unit."""
    target = metric_target(quantity)
    info = model.dataset_info
    energy_unit = info.targets[target].unit if target in info.targets else ""
    return metric_unit(quantity, energy_unit, info.length_unit)


def metric_unit(quantity: str, energy_unit: str, length_unit: str) -> str:
    kind = quantity_kind(quantity)
    if kind == "forces":
        return f"{energy_unit}/{length_unit}"
    if kind == "stress":
        return f"{energy_unit}/{length_unit}^3"
    return f"{energy_unit}/atom" if quantity.endswith("_per_atom") else energy_unit


def _format_row(row: Dict[str, float], model) -> str:
    parts = [
        f"epoch {int(row['epoch']):4d}",
        f"lr {row['learning_rate']:.2e}",
        f"loss {row['train_loss']:.4g}",
    ]
    if "validation_loss" in row:
        parts.append(f"val loss {row['validation_loss']:.4g}")
    for key, value in row.items():
        if key.startswith("validation_") and key.endswith("_rmse"):
            quantity = key[len("validation_") : -len("_rmse")]
            unit = quantity_unit(quantity, model)
            if unit.lower().startswith("ev"):  # what users read: meV/atom, meV/angstrom
                value, unit = 1000 * value, "m" + unit
            parts.append(f"{quantity} RMSE {value:.4g} {unit}".rstrip())
    return " | ".join(parts)


def _refuse_weightless(loss: Loss, distillation: bool) -> None:
    """A loss in which every labelled quantity weighs 0 trains nothing for the whole budget
    (the options alone cannot tell: a stress weight is no use on molecules)."""
    if loss.quantities and not distillation and all(w == 0 for w in loss.weights.values()):
        raise MttError(
            "option 'architecture.training.loss.weights': every quantity labelled in the "
            f"training set ({', '.join(loss.quantities)}) weighs 0, so nothing would be "
            "learnt; give one of them a positive weight"
        )

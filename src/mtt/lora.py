"""Low-rank adapters (LoRA) for fine-tuning, merged into the weights at export.

``W x`` becomes ``W x + (alpha / rank) B A x`` with ``A`` (rank x in) random and ``B``
(out x rank) zero, so the adapted model starts exactly as the pretrained one and only
``A`` and ``B`` train. At export the product is added to ``W`` and the adapter disappears: the
``.pt`` has the pretrained model's size and cost.
"""

import fnmatch
import math
from typing import Dict, List, Optional

import torch


class LoRALinear(torch.nn.Module):
    """A frozen ``torch.nn.Linear`` plus a trainable low-rank update."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        for parameter in self.base.parameters():
            parameter.requires_grad_(False)
        weight = base.weight
        self.lora_a = torch.nn.Parameter(
            torch.randn(rank, base.in_features, dtype=weight.dtype, device=weight.device)
            / math.sqrt(base.in_features)
        )
        self.lora_b = torch.nn.Parameter(
            torch.zeros(base.out_features, rank, dtype=weight.dtype, device=weight.device)
        )
        self.scaling = float(alpha) / float(rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scaling

    # the adapted layer's weight and bias, for code that uses a Linear's matrices directly
    # (pet's lean gradients differentiate its layers by them): differentiable in the adapters
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight + self.scaling * self.lora_b @ self.lora_a

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.base.bias

    def merged(self) -> torch.nn.Linear:
        """A plain Linear layer computing the same function."""
        linear = torch.nn.Linear(
            self.base.in_features,
            self.base.out_features,
            bias=self.base.bias is not None,
            dtype=self.base.weight.dtype,
            device=self.base.weight.device,
        )
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.base.bias is not None:
                linear.bias.copy_(self.base.bias)
        return linear


def _replace(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def add_adapters(model: torch.nn.Module, rank: int, alpha: float, patterns: List[str]) -> List[str]:
    """Wrap every Linear layer whose name matches one of ``patterns``; freeze everything else.
    Returns the wrapped layers' names (stored in checkpoints to rebuild the same model)."""
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    ]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name in names:
        _replace(model, name, LoRALinear(model.get_submodule(name), rank, alpha))
    return names


def adapter_config(model: torch.nn.Module) -> Dict[str, object]:
    """``{"rank", "alpha", "layers"}`` of the adapters in ``model`` (empty if none)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not layers:
        return {}
    first = layers[0][1]
    rank = first.lora_a.shape[0]
    return {"rank": rank, "alpha": first.scaling * rank, "layers": [n for n, _ in layers]}


def restore_adapters(model: torch.nn.Module, config: Dict[str, object]) -> None:
    """Re-create the adapters described by :func:`adapter_config` (before loading weights)."""
    for name in config.get("layers", []):
        _replace(
            model, name, LoRALinear(model.get_submodule(name), config["rank"], config["alpha"])
        )


def merge_adapters(model: torch.nn.Module) -> None:
    """Fold every adapter into its Linear layer, in place."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _replace(model, name, module.merged())

"""K LoRA adapters trained at once on one frozen base (peft trains one adapter at a time).

:class:`BatchedLora` takes a peft model and, for each of its LoRA layers, stacks K copies of
the adapter's A (r x in) and B (out x r) as (K, r, in) and (K, out, r) trainable tensors, all
starting from the peft layer's own initialisation (the member factory's snapshot). Inside
:meth:`BatchedLora.active` every peft layer is swapped for a :class:`BatchedLoraLinear`: the
input batch holds K equal blocks of rows, block k belonging to member k, and the layer computes
peft's ``base(x) + B(A(x)) * alpha / r`` with block k routed through adapter k (two batched
matrix products). :meth:`BatchedLora.load` copies adapter k back into the peft layer, so member
k is evaluated and decoded by the ordinary, unpacked code.

For decoding, where rows leave the batch as they finish, :meth:`BatchedLora.routed` instead
routes every row by its own adapter index (mixed-adapter batches).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

ADAPTER = "default"  # the only adapter memaudit's models carry (models._wrap_lora)


@dataclass
class LoraSite:
    parent: torch.nn.Module
    attr: str
    layer: torch.nn.Module  # the peft LoRA layer (lora_A, lora_B, base_layer, scaling)
    param_names: tuple[str, str]  # its A and B weights' names in model.named_parameters()


def find_lora_layers(model) -> list[LoraSite] | None:
    """The plain peft LoRA linear layers of ``model``, or None when it has none or any that
    packing does not reproduce (DoRA, LoRA bias, several or merged adapters, non-linear)."""
    sites = []
    for name, module in model.named_modules():
        if not hasattr(module, "lora_A") or not hasattr(module, "base_layer"):
            continue
        lora_a = getattr(module, "lora_A", {})
        if (
            ADAPTER not in lora_a
            or len(lora_a) != 1
            or not isinstance(lora_a[ADAPTER], torch.nn.Linear)
            or getattr(module, "merged", False)
            or getattr(module, "use_dora", {}).get(ADAPTER, False)
            or getattr(module, "lora_bias", {}).get(ADAPTER, False)
            or getattr(module, "lora_variant", {})
        ):
            return None
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        prefix = f"{name}." if name else ""
        sites.append(
            LoraSite(
                parent,
                attr,
                module,
                (f"{prefix}lora_A.{ADAPTER}.weight", f"{prefix}lora_B.{ADAPTER}.weight"),
            )
        )
    return sites or None


class BatchedLoraLinear(torch.nn.Module):
    """``base(x) + scaling * (x A_k^T) B_k^T`` for rows of block k of x; x's first dimension
    is K equal blocks, or, with a ``route`` (one adapter index per row of x), row b goes
    through adapter route[b]."""

    def __init__(self, base: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, scaling: float):
        super().__init__()
        self.base = base
        self.a, self.b, self.scaling = a, b, scaling  # (K, r, in), (K, out, r)
        self.route: torch.Tensor | None = None  # (B, K) one-hot rows, set by BatchedLora.routed

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base(x, *args, **kwargs)
        k, r, _ = self.a.shape
        if self.route is None:
            xk = x.to(self.a.dtype).reshape(k, -1, x.shape[-1])  # (K, rows, in)
            lora = torch.bmm(torch.bmm(xk, self.a.transpose(1, 2)), self.b.transpose(1, 2))
        else:
            # Every row through all K down-projections (K * r columns, a few percent of the base
            # layer's work), the other adapters' r columns zeroed, then one up-projection: two
            # plain matrix products instead of a (B, r, in) gather of weights per row.
            u = x.to(self.a.dtype) @ self.a.reshape(k * r, -1).T  # (B, T, K * r)
            u = (u.unflatten(-1, (k, r)) * self.route[:, None, :, None]).flatten(-2)
            lora = u @ self.b.transpose(1, 2).reshape(k * r, -1)  # (B, T, out)
        return (result + (lora * self.scaling).view(result.shape)).to(result.dtype)


class BatchedLora:
    """K stacked adapters for every LoRA layer of a peft model, as trainable (K, ...) tensors
    keyed by the peft parameter names."""

    def __init__(self, model, sites: list[LoraSite], k: int) -> None:
        self.model, self.sites, self.k = model, sites, k
        self.params: dict[str, torch.Tensor] = {}
        self.batched = []
        for site in sites:
            layer = site.layer
            a0 = layer.lora_A[ADAPTER].weight.detach()
            b0 = layer.lora_B[ADAPTER].weight.detach()
            a = a0.unsqueeze(0).repeat(k, 1, 1).requires_grad_()
            b = b0.unsqueeze(0).repeat(k, 1, 1).requires_grad_()
            self.params[site.param_names[0]], self.params[site.param_names[1]] = a, b
            scaling = layer.scaling[ADAPTER]
            self.batched.append(BatchedLoraLinear(layer.base_layer, a, b, scaling))

    @contextlib.contextmanager
    def active(self):
        """The model with every peft LoRA layer replaced by its batched twin."""
        for site, batched in zip(self.sites, self.batched, strict=True):
            setattr(site.parent, site.attr, batched)
        try:
            yield self.model
        finally:
            for site in self.sites:
                setattr(site.parent, site.attr, site.layer)

    @contextlib.contextmanager
    def routed(self, adapters: torch.Tensor):
        """The model (as in :meth:`active`) with row b of a batch through adapter
        ``adapters[b]``; the context's value, ``keep(rows)``, keeps the routes of the rows that
        stay in the batch."""
        state = {"route": torch.nn.functional.one_hot(adapters, self.k).to(self.batched[0].a.dtype)}

        def set_route(route) -> None:
            state["route"] = route
            for layer in self.batched:
                layer.route = route

        set_route(state["route"])
        try:
            with self.active():
                yield lambda rows: set_route(state["route"][rows])
        finally:
            set_route(None)

    @torch.no_grad()
    def load(self, i: int) -> None:
        """Member i's adapters into the peft layers."""
        for site in self.sites:
            site.layer.lora_A[ADAPTER].weight.copy_(self.params[site.param_names[0]][i])
            site.layer.lora_B[ADAPTER].weight.copy_(self.params[site.param_names[1]][i])

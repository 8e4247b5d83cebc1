"""Start a (possibly larger) SigmaNet from a trained one: load every tensor whose name and shape match,
and initialise the new parts so the grown network computes exactly what the trained one did.

Why: CPU training time is scarce, so a new architecture starts from the shipped weights instead of from
scratch. Added inverted-residual blocks get a zero last BatchNorm scale (the block is then the identity)
and an added full-resolution head a zero output conv (it adds nothing); training then uses the new
capacity from a model that is already good. A tensor of the same name but another shape is an error: a
wider layer cannot be grown this way.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sigma.models.backbones import InvertedResidual
from sigma.models.decoder import FullResHead
from sigma.models.weights import WeightsMismatchError


@dataclass
class GrowReport:
    loaded: list[str] = field(default_factory=list)        # tensors copied from the source
    new: list[str] = field(default_factory=list)           # tensors of the target the source lacks
    identity: list[str] = field(default_factory=list)      # new modules initialised to change nothing
    dropped: list[str] = field(default_factory=list)       # source tensors the target has no place for

    def summary(self) -> str:
        return (f"{len(self.loaded)} tensors loaded, {len(self.new)} new "
                f"({', '.join(self.identity) or 'none'} identity-initialised), {len(self.dropped)} dropped")


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> GrowReport:
    own = model.state_dict()
    rep = GrowReport()
    bad = [f"{k}: {tuple(v.shape)} in the source, {tuple(own[k].shape)} here" for k, v in state.items()
           if k in own and own[k].shape != v.shape]
    if bad:
        raise WeightsMismatchError("cannot grow: tensors of another shape: " + "; ".join(bad[:5]))
    with torch.no_grad():
        for k, v in state.items():
            if k in own:
                own[k].copy_(v)
                rep.loaded.append(k)
            else:
                rep.dropped.append(k)
    rep.new = [k for k in own if k not in state]
    new = set(rep.new)
    for name, mod in model.named_modules():
        keys = {f"{name}.{k}" for k in mod.state_dict()}
        if not keys or not keys <= new:
            continue
        if isinstance(mod, InvertedResidual):
            nn.init.zeros_(mod.body[-1][1].weight)     # ConvBNAct(..., act=False): [conv, bn]
            rep.identity.append(name)
        elif isinstance(mod, FullResHead):
            mod.zero_init_()
            rep.identity.append(name)
    return rep


def grow_from(model: nn.Module, source: str, *, deadline: float | None = None) -> GrowReport:
    """Load a saved SigmaNet's matching tensors into `model` (see the module docstring). The weights are read as
    `load_model` reads them (`sigma.models.factory._read_pair`: under the folder's shared hold, a save killed
    mid-commit finished first): they were read with no hold, so a saver stopped mid-commit there (Ctrl-Z, SIGSTOP) or
    committing meanwhile gave one save's weights to a run whose `read_config` had read another's, where every other
    reader says `weights_busy` after `$SIGMA_MODEL_LOCK_WAIT_S`. `deadline` (`lock_deadline()`): the bound shared with
    the caller's `read_config` before; None: `lock_wait_s()` from here."""
    from sigma.models.factory import read_weights

    return load_matching(model, read_weights(source, deadline=deadline))

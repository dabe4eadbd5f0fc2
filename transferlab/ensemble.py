"""Source ensembles: several models attacked as one, fused by logits, probabilities or losses.

`logits`: the mean of the members' logits (Liu et al., ICLR 2017 fuse probabilities; Dong et al., CVPR 2018
(MI-FGSM, §3.2) compare logits, probabilities and losses and find logits best); `probs`: the log of the
mean of the members' softmax (so cross-entropy on it is the loss of the mean probability); `loss`: the
mean of the members' objectives, which the attack loop computes from `member_logits` (predictions use the
mean logits). Components see the ensemble as one model: SGM, taps and hooks reach every member
(`members.<k>.<layer>`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

FUSIONS = ("logits", "probs", "loss")


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module], name: str, fusion: str = "logits"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.members = nn.ModuleList(members)
        self.name = name
        self.fusion = fusion
        classes = {getattr(m, "num_classes", None) for m in members}
        if len(classes) != 1:
            raise ValueError(f"ensemble {name}: members disagree on the number of classes ({classes})")
        self.num_classes = classes.pop()
        self.member_logits: list[torch.Tensor] = []
        self._only: int | None = None
        digests = [f"{getattr(m, 'name', k)}={getattr(m, 'weights_sha256', None)}"
                   for k, m in enumerate(members)]
        known = all(getattr(m, "weights_sha256", None) for m in members)
        self.weights_sha256 = (
            hashlib.sha256(f"{fusion}|{'|'.join(digests)}".encode()).hexdigest() if known else None
        )
        self.eval()

    def active_members(self) -> list[nn.Module]:
        """The members a forward runs (all of them, or the one `only` selects; a `Collection` attacks a
        few per step)."""
        if self._only is not None:
            return [self.members[self._only]]
        return list(self.members)

    @property
    def passes_per_call(self) -> int:
        """Member passes one forward of the ensemble costs during an attack step (cost accounting)."""
        return len(self.members)

    @property
    def call_share(self) -> float:
        """The share of a full forward's cost that a forward costs now: 1, or 1/K inside `only`. The
        attack loop counts model inputs in full forwards, so a single member's inputs count 1/K each."""
        return 1.0 if self._only is None else 1.0 / len(self.members)

    @contextmanager
    def only(self, k: int) -> Iterator[None]:
        """Forwards run member k alone (its logits are the ensemble's output) until the block ends
        (SVRE's inner loop)."""
        if not 0 <= k < len(self.members):
            raise IndexError(f"ensemble {self.name} has {len(self.members)} members, no member {k}")
        previous, self._only = self._only, int(k)
        try:
            yield
        finally:
            self._only = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = [m(x) for m in self.active_members()]
        self.member_logits = logits
        if self.fusion == "probs":
            probs = torch.stack([z.float().softmax(1) for z in logits]).mean(0)
            return probs.clamp_min(1e-12).log().to(logits[0].dtype)
        return torch.stack(logits).mean(0)


COLLECTION_ORDERS = ("shuffle", "cycle")


class Collection(Ensemble):
    """Weight sets of one architecture attacked as a source (LGV; Gubri et al., ECCV 2022): predictions
    use the mean logits of all K sets; during an attack, step t differentiates ``n_grad`` of them.

    Which ones: the sets in a fixed order — ``shuffle``, a permutation drawn once from ``seed`` (the run's),
    or ``cycle``, the file order — taken ``n_grad`` at a time, cycling: step t uses order[(t·n_grad + j) mod
    K], j < n_grad. This is LGV's attack as its authors ported it (torchattacks 3.5.1 `LightEnsemble`,
    order='shuffle', n_grad=1: "1 (default) is recommended for efficient iterative attacks"), except that
    the order is keyed by the step, not by a forward counter, so every image of a batch and every batch
    sees the same set at a step (no dependence on batch-mates or on forwards other components send).
    ``n_grad`` ≥ K (or −1) attacks the full logit ensemble every step. The attack loop calls
    ``select_step(t)`` before each step and ``select_step(None)`` after the last.
    """

    def __init__(self, members: list[nn.Module], name: str, n_grad: int = 1, order: str = "shuffle",
                 seed: int = 0):
        if order not in COLLECTION_ORDERS:
            raise ValueError(f"collection {name}: order must be one of {COLLECTION_ORDERS}, got {order!r}")
        if n_grad == 0 or n_grad < -1:
            raise ValueError(f"collection {name}: n_grad must be >= 1 (or -1 for all), got {n_grad}")
        super().__init__(members, name, "logits")
        k = len(members)
        self.n_grad = k if n_grad == -1 else min(int(n_grad), k)
        self.order_rule, self.seed = order, int(seed)
        perm = torch.randperm(k, generator=torch.Generator().manual_seed(self.seed)) if order == "shuffle" \
            else torch.arange(k)
        self.order = [int(i) for i in perm]
        self.active: list[int] | None = None
        if self.weights_sha256 is not None:
            spec = f"{self.weights_sha256}|n_grad={self.n_grad}|order={order}|seed={self.seed}"
            self.weights_sha256 = hashlib.sha256(spec.encode()).hexdigest()

    def select_step(self, step: int | None) -> None:
        """Attack step `step`'s sets from now on; None: all sets (predictions)."""
        k = len(self.members)
        if step is None or self.n_grad >= k:
            self.active = None
        else:
            self.active = [self.order[(step * self.n_grad + j) % k] for j in range(self.n_grad)]

    @property
    def passes_per_call(self) -> int:
        return self.n_grad

    def active_members(self) -> list[nn.Module]:
        if self.active is None:
            return list(self.members)
        return [self.members[i] for i in self.active]


def passes_per_call(model: nn.Module) -> int:
    """Source-model passes one forward of `model` costs inside an attack step: 1, or an ensemble's members."""
    return int(getattr(model, "passes_per_call", 1))

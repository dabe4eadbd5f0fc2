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
        digests = [f"{getattr(m, 'name', k)}={getattr(m, 'weights_sha256', None)}"
                   for k, m in enumerate(members)]
        known = all(getattr(m, "weights_sha256", None) for m in members)
        self.weights_sha256 = (
            hashlib.sha256(f"{fusion}|{'|'.join(digests)}".encode()).hexdigest() if known else None
        )
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = [m(x) for m in self.members]
        self.member_logits = logits
        if self.fusion == "probs":
            probs = torch.stack([z.float().softmax(1) for z in logits]).mean(0)
            return probs.clamp_min(1e-12).log().to(logits[0].dtype)
        return torch.stack(logits).mean(0)

"""Weight collections (LGV) as sources: sets per step, order, batch independence, config checks, a run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferlab.attacks.registry import build_attack
from transferlab.config import load_config
from transferlab.ensemble import Collection
from transferlab.errors import ConfigError
from transferlab.testing import TinyResNet, tiny_batch

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py: one torch thread


class Counting(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        self.net = TinyResNet(seed=seed)
        self.num_classes = self.net.num_classes
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def _collection(k: int = 5, **kw) -> Collection:
    return Collection([Counting(s) for s in range(k)], "tiny_lgv", **kw)


def test_each_step_differentiates_n_grad_sets_in_a_seeded_cycle():
    coll = _collection(5, n_grad=2, order="shuffle", seed=3)
    assert sorted(coll.order) == list(range(5)) and coll.order != list(range(5))
    assert _collection(5, order="shuffle", seed=3).order == coll.order  # the order is the seed's alone
    x, y = tiny_batch(2)
    build_attack("pgd", eps=8 / 255, alpha=2 / 255, steps=4).run(coll, x, y)
    calls = [m.calls for m in coll.members]
    assert sum(calls) == 4 * 2  # 4 steps × 2 sets, one forward each
    want = [0] * 5
    for t in range(4):
        for j in range(2):
            want[coll.order[(2 * t + j) % 5]] += 1
    assert calls == want
    assert coll.active is None  # predictions after the attack use every set
    before = [m.calls for m in coll.members]
    coll(x)
    assert [m.calls - b for m, b in zip(coll.members, before, strict=True)] == [1] * 5


def test_one_set_per_step_is_pgd_on_that_set_when_the_collection_has_one_order():
    """cycle order, n_grad=1, one step: the collection attack equals PGD on its first set."""
    coll = _collection(3, order="cycle")
    x, y = tiny_batch(3)
    attack = build_attack("pgd", eps=8 / 255, alpha=2 / 255, steps=1)
    got = attack.run(coll, x, y)
    want = build_attack("pgd", eps=8 / 255, alpha=2 / 255, steps=1).run(coll.members[0], x, y)
    assert torch.equal(got, want)


def test_an_image_does_not_depend_on_its_batch_mates():
    coll = _collection(4, order="shuffle", seed=1)
    x, y = tiny_batch(4)
    attack = build_attack("mi+di", eps=8 / 255, alpha=2 / 255, steps=5, seed=2)
    batch = attack.run(coll, x, y)
    for b in range(4):
        alone = attack.run(coll, x[b:b + 1], y[b:b + 1], keys=[b])
        torch.testing.assert_close(alone[0], batch[b], atol=1e-12, rtol=0)


def _write(tmp_path, collections: str, sources: str = "[m, m_lgv]", targets: str = "[m]"):
    path = tmp_path / "c.yaml"
    path.write_text(f"models:\n  collections: {collections}\n  sources: {sources}\n  targets: {targets}\n"
                    "attacks: {pgd: {method: pgd}}\n")
    return path


def test_config_checks_name_the_key_and_file(tmp_path):
    cfg = load_config(_write(tmp_path, "{m_lgv: {model: m, weights: snaps}}"))
    assert cfg["models"]["collections"]["m_lgv"] == {"model": "m", "weights": "snaps", "n_grad": 1,
                                                     "order": "shuffle"}
    cases = [("{m_lgv: {model: m, weights: s, ngrad: 2}}", "unknown key 'models.collections.m_lgv.ngrad'"),
             ("{m_lgv: {weights: s}}", "'models.collections.m_lgv.model' is required"),
             ("{m_lgv: {model: m, weights: s, n_grad: 0}}", "n_grad"),
             ("{m_lgv: {model: m, weights: s, order: random}}", "'shuffle' or 'cycle'")]
    for text, message in cases:
        with pytest.raises(ConfigError, match=r"c\.yaml") as info:
            load_config(_write(tmp_path, text))
        assert message in str(info.value)
    with pytest.raises(ConfigError, match="a collection is a source"):
        load_config(_write(tmp_path, "{m_lgv: {model: m, weights: s}}", targets="[m, m_lgv]"))


def test_a_run_attacks_a_collection_of_resnet20_weight_sets(tmp_path):
    """`models.collections` end to end on the CIFAR ResNet-20: two perturbed weight sets as an LGV source,
    the start model marked white-box."""
    import pandas as pd
    from conftest import CIFAR_JPG, CIFAR_WEIGHTS, need
    from safetensors.torch import save_file

    from transferlab.cli import main
    from transferlab.weights import load_checkpoint

    need(CIFAR_JPG), need(CIFAR_WEIGHTS)
    (start,) = sorted((CIFAR_WEIGHTS / "akamaster").glob("resnet20-*.th"))
    state = load_checkpoint(start)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    g = torch.Generator().manual_seed(0)
    for k in range(2):
        noisy = {n: (t + 0.01 * torch.randn(t.shape, generator=g) if t.is_floating_point() else t)
                 .contiguous() for n, t in state.items()}
        save_file(noisy, str(snaps / f"cifar10_resnet20-lgv{k:03d}.safetensors"))
    config = tmp_path / "c.yaml"
    config.write_text(
        f"seed: 0\ndata: {{kind: folder, root: {CIFAR_JPG}, resolution: 32, crop_pct: 1.0, limit: 4, "
        "eligibility: all}\n"
        f"models:\n  weights_dir: {CIFAR_WEIGHTS}\n"
        f"  collections: {{rn20_lgv: {{model: cifar10_resnet20, weights: {snaps}}}}}\n"
        "  sources: [rn20_lgv]\n  targets: [cifar10_resnet20, cifar10_resnet56_b]\n"
        "attack_defaults: {eps: 4, alpha: 1, steps: 2, batch_size: 4}\nattacks: {pgd: {method: pgd}}\n")
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet", "--threads", "1"]) == 0
    results = pd.read_csv(out / "results.csv")
    wb = dict(zip(results.target, results.white_box, strict=False))
    assert wb == {"cifar10_resnet20": True, "cifar10_resnet56_b": False}
    assert len(list((out / "adv" / "pgd" / "rn20_lgv").glob("*.png"))) == 4


def test_collection_files_pin_the_manifest_hashes_and_refuse_an_unfinished_collection(tmp_path):
    import hashlib
    import json

    from transferlab.weights import MissingWeightsError, collection_files, load_checkpoint

    out = tmp_path / "lgv"
    snaps = out / "snapshots"
    snaps.mkdir(parents=True)
    (out / "checkpoint.pt").write_bytes(b"")  # an LGV run still collecting
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(snaps / "m-lgv001.safetensors"))
    with pytest.raises(MissingWeightsError, match="has not finished"):
        collection_files(snaps, "m_lgv")
    sha = hashlib.sha256((snaps / "m-lgv001.safetensors").read_bytes()).hexdigest()
    (snaps / "manifest.json").write_text(json.dumps(
        {"snapshots": [{"file": "snapshots/m-lgv001.safetensors", "sha256": sha}]}))
    (files,) = collection_files(snaps, "m_lgv")
    assert files.endswith(f"#sha256={sha}")
    assert torch.equal(load_checkpoint(files)["w"], torch.ones(2))
    save_file({"w": torch.zeros(2)}, str(snaps / "m-lgv001.safetensors"))  # changed after it was listed
    with pytest.raises(Exception, match="sha256"):
        load_checkpoint(files)

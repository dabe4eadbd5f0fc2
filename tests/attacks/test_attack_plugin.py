"""docs/plugins.md, executed: its module file is written to a temporary package, built by import path and
by name, run, and put through the shared battery."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_attack_battery import TinyResNet, check_attack, single_thread, tiny_batch  # noqa: E402, F401 (autouse)

from transferlab.attacks.registry import COMPONENTS, build_attack  # noqa: E402

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
PATH = "my_pkg.my_attack:GradientNoise"


def guide_module() -> str:
    """The guide's python block that starts with `# my_pkg/my_attack.py`."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)
    (code,) = [b for b in blocks if b.startswith("# my_pkg/my_attack.py")]
    return code


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The guide's package on sys.path; registry and module cache restored afterwards."""
    pkg = tmp_path / "my_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "my_attack.py").write_text(guide_module())
    monkeypatch.syspath_prepend(str(tmp_path))
    before = dict(COMPONENTS)
    yield
    for key in set(COMPONENTS) - set(before):
        del COMPONENTS[key]
    for name in [m for m in sys.modules if m == "my_pkg" or m.startswith("my_pkg.")]:
        del sys.modules[name]


def test_guide_plugin_by_import_path_and_by_name(plugin):
    model, (x, y) = TinyResNet(), tiny_batch(2)
    attack = build_attack("mi+" + PATH, {PATH: {"sigma": 0.2}}, eps=8 / 255, alpha=2 / 255, steps=3)
    assert [c.name for c in attack.components] == ["gradnoise", "mi"]  # its order 30 runs before MI's 60
    assert attack.components[0].sigma == 0.2
    adv = attack.run(model, x, y, keys=["a", "b"])
    assert (adv - x).abs().max() <= 8 / 255 + 1e-12 and not torch.equal(adv, x)
    # importing the module registered the decorator's name: it now works like a built-in
    by_name = build_attack("mi+gradnoise", {"gradnoise": {"sigma": 0.2}}, eps=8 / 255, alpha=2 / 255, steps=3)
    assert torch.equal(by_name.run(model, x, y, keys=["a", "b"]), adv)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("method", [PATH, "mi+sgm+" + PATH])
def test_guide_plugin_passes_the_battery(plugin, method, norm):
    check_attack(method, norm, {PATH: {"sigma": 0.5}})

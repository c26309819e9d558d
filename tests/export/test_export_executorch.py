"""ExecuTorch export (XNNPACK) of dense and pruned models, checked in ExecuTorch's runtime."""

import sys

import pytest
import torch

from fedprune.export import ExportError
from fedprune.export.executorch import export_executorch, pte_runner
from fedprune.models import new_model
from fedprune.pruning import BoundaryRule, prune_model


@pytest.mark.slow
@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_pte_export_matches_pytorch(pruned, tmp_path):
    model, spec = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                            widths=None, seed=0)
    x = spec.example_input()
    if pruned:
        assert prune_model(model, x, BoundaryRule(k=0.5, mode="low", max_fraction=0.2)).n_removed > 0
    report = export_executorch(model, x, tmp_path / "m.pte")
    assert report.bytes > 0 and report.max_abs_diff <= 1e-4
    out = pte_runner(report.path, torch.ones_like(x))()[0]
    with torch.no_grad():
        torch.testing.assert_close(out, model.eval()(torch.ones_like(x)), atol=1e-4, rtol=1e-3)


def test_missing_executorch_gives_an_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "executorch", None)  # import executorch -> ImportError
    model, spec = new_model("cnn_femnist", num_classes=3, in_channels=1, image_size=28,
                            widths=[2, 4], seed=0)
    with pytest.raises(ExportError, match="pip install 'fedprune\\[executorch\\]'"):
        export_executorch(model, spec.example_input(), tmp_path / "m.pte")

"""The method catalog is plain data that matches the code it names."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from sslpipe.datasets.recipes import PRESETS
from sslpipe.ssl_ops.catalog import BACKBONE_NAMES, METHODS, OPTIMIZER_NAMES, MethodCard
from sslpipe.ssl_ops.method import SSLMethod, load_attribute

# Keyword-only parameters of an objective that a spec does not set: the method passes them.
_PASSED_BY_THE_METHOD = {"return_terms", "generator", "update_bank"}


def _spec_options(objective) -> dict[str, object]:
    parameters = inspect.signature(inspect.unwrap(objective)).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.kind is p.KEYWORD_ONLY and p.name not in _PASSED_BY_THE_METHOD
    }


@pytest.mark.parametrize("card", METHODS.values(), ids=list(METHODS))
def test_card_names_real_code_and_declares_every_loss_option(card: MethodCard) -> None:
    assert issubclass(load_attribute(card.model), SSLMethod)
    options = _spec_options(load_attribute(card.objective))
    assert set(card.loss) <= set(options), f"{card.name}: options the objective does not take"
    assert set(options) <= set(card.loss), f"{card.name}: options missing from the card"
    assert card.views in PRESETS
    assert card.optimizer in OPTIMIZER_NAMES
    assert card.source, "every card cites the official code its defaults come from"


def test_the_catalog_imports_without_torch() -> None:
    code = (
        "import sys, sslpipe.ssl_ops.catalog, sslpipe.pipelines.stages.pretrain;"
        "print(sorted(m for m in ('torch', 'ray', 'nvidia.dali') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_backbone_names_match_the_builders() -> None:
    from sslpipe.ssl_ops.backbones import BACKBONES

    assert set(BACKBONE_NAMES) == set(BACKBONES)


@pytest.mark.parametrize(
    ("epochs", "lr", "weight_decay", "tau"),
    [(40, 0.45, 1e-6, 0.97), (100, 0.45, 1e-6, 0.99), (200, 0.3, 1e-6, 0.99),
     (300, 0.3, 1e-6, 0.99), (1000, 0.2, 1.5e-6, 0.996), (1500, 0.2, 1.5e-6, 0.996)],
)  # fmt: skip
def test_byol_takes_the_official_values_of_its_run_length(
    epochs: int, lr: float, weight_decay: float, tau: float
) -> None:
    """byol/configs/byol.py:21-23: the shortest preset at least as long as the run."""
    card = METHODS["byol"].for_epochs(epochs)
    assert (card.base_lr, card.weight_decay, card.options["base_momentum"]) == (
        lr, weight_decay, tau,
    )  # fmt: skip
    assert card.options["predictor_hidden"] == 4096


def test_vit_patch_sizes_match_the_builders() -> None:
    from sslpipe.ssl_ops.backbones import VIT_SHAPES
    from sslpipe.ssl_ops.catalog import vit_patch_size

    assert {n: vit_patch_size(n) for n in VIT_SHAPES} == {
        n: s.patch_size for n, s in VIT_SHAPES.items()
    }
    assert vit_patch_size("resnet50") is None

"""What a spec may name, as plain data: methods with their defaults, backbones, optimizers.

This module imports no torch, so that ``sslpipe validate`` can check a spec in well under a
second. Each ``MethodCard`` is the one place where a method's defaults live — the papers'
values, with the official file they were read from — and names (``"module:attr"``) the
``nn.Module`` that trains it and the objective it calls; those are imported only when a
method is built (``ssl_ops.method.build_method``).

``loss`` lists the options of the method's objective that a spec's ``loss:`` mapping may set,
with this method's defaults (``tests/test_methods.py`` checks them against the objective's
signature). ``options`` are the model-level settings a spec's ``method_options:`` may set
(predictor widths, target momentum, …).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

OptionValue = int | float | bool | str | tuple[int, ...]

BACKBONE_NAMES = ("small_cnn", "resnet18", "resnet34", "resnet50")
OPTIMIZER_NAMES = ("lars", "sgd", "adam", "adamw")
LR_SCHEDULES = ("cosine", "step")


def _frozen(mapping: Mapping[str, OptionValue] | None = None) -> Mapping[str, OptionValue]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class MethodCard:
    """A self-supervised method's defaults and where its code lives (papers' values)."""

    name: str
    model: str  # "module:Class", an ``ssl_ops.method.SSLMethod``
    objective: str  # "module:function", the objective the model calls
    projector: tuple[int, ...]
    views: str  # view recipe preset (``datasets.recipes.PRESETS``)
    pairwise: bool = True  # the objective takes (z1, z2); else a list of views
    num_views: int | None = 2  # exact number of image views; None = any number ≥ 2
    jigsaw: bool = False  # needs a jigsaw view after its image view (PIRL)
    separate_branches: bool = False  # may train two branches that share no weights
    needs_indices: bool = False  # reads each sample's split index (a memory bank)
    optimizer: str = "lars"
    base_lr: float = 0.2
    lr_scaling: Literal["linear", "none"] = "linear"  # lr = base_lr × batch/256, or base_lr
    lr_biases: float | None = None  # biases and norm parameters get their own base lr
    weight_decay: float = 1e-6
    lr_schedule: str = "cosine"
    warmup_epochs: float = 10  # linear warm-up before the schedule
    zero_init_residual: bool = False  # last BN of each ResNet block starts at zero
    decay_bias_and_norm: bool = False  # weight decay on biases and norm parameters too
    loss: Mapping[str, OptionValue] = field(default_factory=_frozen)
    options: Mapping[str, OptionValue] = field(default_factory=_frozen)
    source: str = ""  # the official code the defaults were read from

    def loss_kwargs(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.loss, **overrides}

    def model_options(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.options, **overrides}


_JOINT = "sslpipe.ssl_ops.joint_embedding:JointEmbedding"
_DUALITY = (
    "Garrido et al., ICLR 2023 (no official code): VICReg's training recipe "
    "(facebookresearch/vicreg main_vicreg.py), τ 0.1 ours"
)


def _vicreg_family(name: str, objective: str, source: str = "", **loss: OptionValue) -> MethodCard:
    return MethodCard(
        name=name,
        model=_JOINT,
        objective=objective,
        projector=(8192, 8192, 8192),
        views="vicreg",
        separate_branches=True,
        optimizer="lars",
        base_lr=0.2,
        weight_decay=1e-6,
        zero_init_residual=True,
        loss=_frozen(
            {
                "sim_coeff": 25.0,
                "std_coeff": 25.0,
                "cov_coeff": 1.0,
                "eps": 1e-4,
                "loss_precision": "fp32",
                **loss,
            }
        ),
        source=source
        or "facebookresearch/vicreg main_vicreg.py (ResNet-50, 8192-8192-8192, LARS "
        "0.2 × batch/256, wd 1e-6, λ = μ = 25, ν = 1; the 1000-epoch recipe's values)",
    )


def _simclr_family(
    name: str, objective: str, *, pairwise: bool, source: str = "", **loss: OptionValue
) -> MethodCard:
    return MethodCard(
        name=name,
        model=_JOINT,
        objective=objective,
        pairwise=pairwise,
        num_views=2 if pairwise else None,  # NT-Xent takes any number of views (multi-crop)
        projector=(2048, 128),
        views="simclr",
        optimizer="lars",
        base_lr=0.3,
        weight_decay=1e-6,
        zero_init_residual=True,
        loss=_frozen({"temperature": 0.1, **loss}),
        # model.py runs the base network and the head on all views concatenated.
        options=_frozen(
            {
                "hidden_bias": False,
                "output_norm": True,
                "encode_views_together": True,
                "project_views_together": True,
            }
        ),
        source=source
        or "google-research/simclr@1.0 run.py (LARS 0.3 × batch/256, wd 1e-6, τ 0.1), "
        "model_util.py (2048-128 head ending in BN), resnet.py (init_zero)",
    )


# The official loss sums both directions (simclr@1.0 objective.py: loss_a + loss_b).
_NT_XENT: dict[str, OptionValue] = {"standardize": False, "reduction": "view_sum"}
_DCL = (
    "Yeh et al., ECCV 2022, eq. 6-7 (no official code; as lightly's DCLLoss), with SimCLR's "
    "training recipe (google-research/simclr@1.0)"
)

METHODS: dict[str, MethodCard] = {
    "vicreg": _vicreg_family("vicreg", "sslpipe.ssl_ops.vicreg:vicreg_loss"),
    "vicreg_exp": _vicreg_family(
        "vicreg_exp", "sslpipe.ssl_ops.duality:vicreg_exp_loss", _DUALITY, temperature=0.1
    ),
    "vicreg_ctr": _vicreg_family(
        "vicreg_ctr", "sslpipe.ssl_ops.duality:vicreg_ctr_loss", _DUALITY, temperature=0.1
    ),
    "barlow_twins": MethodCard(
        name="barlow_twins",
        model=_JOINT,
        objective="sslpipe.ssl_ops.barlow_twins:barlow_twins_loss",
        projector=(8192, 8192, 8192),
        views="byol",
        separate_branches=True,
        optimizer="lars",
        base_lr=0.2,
        lr_biases=0.0048,
        weight_decay=1e-6,
        zero_init_residual=True,
        loss=_frozen({"lambd": 0.0051, "scaling": "full_batch", "loss_precision": "fp32"}),
        options=_frozen({"hidden_bias": False}),
        source="facebookresearch/barlowtwins main.py (LARS, lr 0.2 weights / 0.0048 biases "
        "and BN × batch/256, wd 1e-6 — the paper says 1.5e-6 —, λ 0.0051, 8192-8192-8192 "
        "without biases, BYOL augmentations)",
    ),
    "simclr": _simclr_family(
        "simclr", "sslpipe.ssl_ops.nt_xent:nt_xent_loss", pairwise=False, **_NT_XENT
    ),
    "simclr_abs": _simclr_family(
        "simclr_abs", "sslpipe.ssl_ops.nt_xent:simclr_abs_loss", pairwise=False, **_NT_XENT
    ),
    "simclr_sq": _simclr_family(
        "simclr_sq", "sslpipe.ssl_ops.nt_xent:simclr_sq_loss", pairwise=False, **_NT_XENT
    ),
    "dcl": _simclr_family(
        "dcl", "sslpipe.ssl_ops.dcl:dcl_loss", pairwise=True, source=_DCL, weighted=False, sigma=0.5
    ),
    "dclw": _simclr_family(
        "dclw", "sslpipe.ssl_ops.dcl:dcl_loss", pairwise=True, source=_DCL, weighted=True, sigma=0.5
    ),
    "dcl_abs": _simclr_family(
        "dcl_abs", "sslpipe.ssl_ops.dcl:dcl_abs_loss", pairwise=True, source=_DCL
    ),
    "dcl_sq": _simclr_family(
        "dcl_sq", "sslpipe.ssl_ops.dcl:dcl_sq_loss", pairwise=True, source=_DCL
    ),
    "wmse": MethodCard(
        name="wmse",
        model=_JOINT,
        objective="sslpipe.ssl_ops.wmse:wmse_loss",
        pairwise=False,
        num_views=None,
        projector=(1024, 128),
        views="wmse",
        optimizer="adam",
        base_lr=2e-3,
        lr_scaling="none",
        weight_decay=1e-6,
        lr_schedule="step",
        # The official warm-up is 500 iterations: about one ImageNet-100 epoch at batch 256.
        warmup_epochs=1,
        decay_bias_and_norm=True,
        loss=_frozen({"w_size": 256, "w_iter": 1, "eps": 0.0, "normalize": True}),
        # The head's batch norm sees all views at once (the official forward runs the head
        # on torch.cat of the views).
        options=_frozen({"project_views_together": True}),
        source="htdt/self-supervised README (ImageNet-100: Adam lr 2e-3, emb 128, w_size "
        "256), cfg.py (head 1024 with BN, L2 1e-6 on every parameter, step schedule ×0.2 at "
        "epochs −50 and −25), train.py (500-iteration warm-up), methods/w_mse.py",
    ),
    "spectral": MethodCard(
        name="spectral",
        model=_JOINT,
        objective="sslpipe.ssl_ops.spectral:spectral_contrastive_loss",
        projector=(8192, 8192, 8192),
        views="simsiam",
        optimizer="sgd",
        base_lr=0.05,
        weight_decay=1e-4,
        warmup_epochs=0,
        zero_init_residual=True,
        decay_bias_and_norm=True,
        loss=_frozen({"mu": 10.0}),
        options=_frozen({"output_norm": True}),
        source="jhaochenz/spectral_contrastive_learning configs/spectral_resnet_mlp8192_"
        "norelu_3layer_imagenet_lr005_mu10_bs384_100eps.yaml (SGD 0.05 × batch/256, wd 1e-4 "
        "on every parameter, μ 10, no warm-up), models/backbones/resnet_mlp_norelu_3layer.py "
        "(8192³ head with BN on the output, zero-init residuals)",
    ),
    "byol": MethodCard(
        name="byol",
        model="sslpipe.ssl_ops.byol:BYOL",
        objective="sslpipe.ssl_ops.byol:byol_loss",
        projector=(4096, 256),
        views="byol",
        optimizer="lars",
        base_lr=0.2,
        weight_decay=1.5e-6,
        zero_init_residual=True,
        options=_frozen({"predictor_hidden": 4096, "base_momentum": 0.996}),
        source="google-deepmind/deepmind-research byol/configs/byol.py (the 1000-epoch "
        "preset: LARS 0.2 × batch/256, wd 1.5e-6, τ_base 0.996; projector and predictor "
        "4096-256), utils/networks.py (no output bias), byol_experiment.py",
    ),
    "simsiam": MethodCard(
        name="simsiam",
        model="sslpipe.ssl_ops.simsiam:SimSiam",
        objective="sslpipe.ssl_ops.simsiam:simsiam_loss",
        projector=(2048, 2048, 2048),
        views="simsiam",
        optimizer="sgd",
        base_lr=0.05,
        weight_decay=1e-4,
        warmup_epochs=0,
        zero_init_residual=True,
        decay_bias_and_norm=True,
        options=_frozen({"predictor_hidden": 512, "fix_predictor_lr": True}),
        source="facebookresearch/simsiam main_simsiam.py (SGD 0.05 × batch/256, momentum 0.9, "
        "wd 1e-4 on every parameter, cosine, no warm-up, README's --fix-pred-lr), "
        "simsiam/builder.py (2048-d projector, 512-d predictor)",
    ),
    "pirl": MethodCard(
        name="pirl",
        model="sslpipe.ssl_ops.pirl:PIRL",
        objective="sslpipe.ssl_ops.pirl:pirl_nce_loss",
        projector=(128,),
        views="pirl",
        num_views=1,
        jigsaw=True,
        needs_indices=True,
        optimizer="sgd",
        base_lr=0.03,
        weight_decay=1e-4,
        warmup_epochs=0,
        loss=_frozen({"temperature": 0.07, "num_negatives": 32000, "loss_weight": 0.5}),
        source="facebookresearch/vissl configs/config/pretrain/pirl/"
        "pirl_jigsaw_4node_resnet50.yaml (SGD 0.12 at batch 1024 = 0.03 × batch/256, "
        "wd 1e-4, 128-d, τ 0.07, 32000 negatives, λ 0.5)",
    ),
}


def get_method(name: str) -> MethodCard:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]

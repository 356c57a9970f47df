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

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

OptionValue = int | float | bool | str | tuple[int, ...]

BACKBONE_NAMES = (
    "small_cnn",
    "resnet18",
    "resnet34",
    "resnet50",
    "vit_tiny_patch16",
    "vit_small_patch16",
    "vit_base_patch16",
    "vit_tiny_patch4",
    "vit_small_patch4",
    "vit_mini_patch4",
)
OPTIMIZER_NAMES = ("lars", "sgd", "adam", "adamw")
LR_SCHEDULES = ("cosine", "step")
# The optimizer's parameter groups (``ssl_ops.optim``): weight matrices and kernels, and
# biases and normalisation parameters (ndim ≤ 1), which skip weight decay unless
# ``decay_bias_and_norm``.
PARAMETER_GROUPS = ("weights", "biases_and_norms")


def _frozen(mapping: Mapping[str, OptionValue] | None = None) -> Mapping[str, OptionValue]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class HyperSchedule:
    """A cosine over the run of one optimizer hyperparameter (a key of the optimizer's
    parameter groups: ``"momentum"``, ``"weight_decay"``, ``"eta"``, …) from each group's
    value at the start to ``end``, on the parameter groups named (``PARAMETER_GROUPS``)."""

    hyperparameter: str
    end: float
    groups: tuple[str, ...] = PARAMETER_GROUPS


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer and its schedules as one run uses them: a card's defaults with the spec's
    fields (``PretrainConfig.optimizer_settings``), resolved once."""

    name: str
    lr: float  # after the batch-size scaling
    bias_lr: float | None  # biases and norm parameters, when they have their own
    weight_decay: float
    decay_bias_and_norm: bool
    betas: tuple[float, float]
    lr_schedule: str
    warmup_epochs: float
    lr_end: float  # the lr at the end of the cosine (bias_lr: scaled alike)
    lr_drop_epochs: tuple[int, ...]  # step schedule: epochs before the end
    lr_drop_factor: float
    schedules: tuple[HyperSchedule, ...]  # weight decay's, then the card's


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
    weight_decay_end: float | None = None  # cosine from weight_decay to this over the run
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    lr_end_factor: float = 0.001  # the cosine ends at lr_end_factor × lr + min_lr
    min_lr: float = 0.0
    schedules: tuple[HyperSchedule, ...] = ()  # further per-group hyperparameter schedules
    drop_path_rate: float = 0.0  # ViT backbones: stochastic depth
    # The first n views are global crops (a teacher sees them): one size, no view larger.
    global_views: int = 0
    # Run length (epochs) → values of other fields (``options``: a mapping merged into the
    # card's) for runs of up to that length: ``for_epochs`` picks the shortest length at least
    # the run's, the longest beyond it.
    epoch_presets: Mapping[int, Mapping[str, Any]] = field(default_factory=_frozen)
    loss: Mapping[str, OptionValue] = field(default_factory=_frozen)
    options: Mapping[str, OptionValue] = field(default_factory=_frozen)
    source: str = ""  # the official code the defaults were read from

    def for_epochs(self, epochs: int) -> MethodCard:
        """This card with the values of its ``epoch_presets`` entry for a run of ``epochs``."""
        if not self.epoch_presets:
            return self
        lengths = sorted(self.epoch_presets)
        preset = dict(self.epoch_presets[next((n for n in lengths if n >= epochs), lengths[-1])])
        options = _frozen({**self.options, **preset.pop("options", {})})
        return replace(self, **preset, options=options)

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

# byol/configs/byol.py:21-23 (_LR_PRESETS, _WD_PRESETS, _EMA_PRESETS), keyed by epochs.
_BYOL_PRESETS = _frozen(
    {
        epochs: _frozen({"base_lr": lr, "weight_decay": wd, "options": {"base_momentum": tau}})
        for epochs, lr, wd, tau in (
            (40, 0.45, 1e-6, 0.97),
            (100, 0.45, 1e-6, 0.99),
            (300, 0.3, 1e-6, 0.99),
            (1000, 0.2, 1.5e-6, 0.996),
        )
    }
)
# facebookresearch/dino main_dino.py:55-105 and the README's ViT runs (teacher τ 0.04 → 0.07
# over 30 epochs): the DINO model's options.
_DINO_OPTIONS: dict[str, OptionValue] = {
    "out_dim": 65536,
    "use_bn_in_head": False,
    "norm_last_layer": True,
    "base_momentum": 0.996,
    "center_momentum": 0.9,
    "warmup_teacher_temp": 0.04,
    "teacher_temp": 0.07,
    "warmup_teacher_temp_epochs": 30,
    "freeze_last_layer_epochs": 1,
    "clip_grad": 3.0,
}


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
        epoch_presets=_BYOL_PRESETS,
        source="google-deepmind/deepmind-research byol/configs/byol.py:21-23 (LARS "
        "lr × batch/256, wd and τ_base by run length: 40/100/300/1000 epochs; the fields "
        "above are the 1000-epoch preset; projector and predictor 4096-256), "
        "utils/networks.py (no output bias), byol_experiment.py",
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
    "dino": MethodCard(
        name="dino",
        model="sslpipe.ssl_ops.dino:DINO",
        objective="sslpipe.ssl_ops.dino:dino_loss",
        projector=(2048, 2048, 256),  # the head's hidden widths, then its bottleneck
        views="dino",
        pairwise=False,
        num_views=None,
        global_views=2,
        optimizer="adamw",
        base_lr=5e-4,
        weight_decay=0.04,
        weight_decay_end=0.4,
        warmup_epochs=10,
        lr_end_factor=0.0,
        min_lr=1e-6,
        drop_path_rate=0.1,
        loss=_frozen({"student_temp": 0.1}),
        options=_frozen(_DINO_OPTIONS),
        source="facebookresearch/dino main_dino.py:55-117 (AdamW 5e-4 × batch/256, 10 warm-up "
        "epochs, cosine to min_lr 1e-6, wd cosine 0.04 → 0.4 without biases and norms "
        "(utils.get_params_groups), drop-path 0.1, clip 3.0 per parameter, last layer frozen "
        "for 1 epoch, m 0.996 → 1, 65536 prototypes), README (τ_t 0.04 → 0.07 over 30 "
        "epochs), vision_transformer.py:257 (DINOHead 2048-2048-256). ResNet-50: README.md:207 "
        "(pipelines/examples/imagenet_dino_resnet50.yaml)",
    ),
    "mae": MethodCard(
        name="mae",
        model="sslpipe.ssl_ops.mae:MAE",
        objective="sslpipe.ssl_ops.mae:mae_loss",
        projector=(),  # the decoder is set by the options
        views="mae",
        pairwise=False,
        num_views=1,
        optimizer="adamw",
        base_lr=1.5e-4,
        weight_decay=0.05,
        betas=(0.9, 0.95),
        warmup_epochs=40,
        lr_end_factor=0.0,
        loss=_frozen({"norm_pix_loss": True}),
        options=_frozen(
            {"mask_ratio": 0.75, "decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16}
        ),
        source="facebookresearch/mae PRETRAIN.md (--norm_pix_loss --mask_ratio 0.75 "
        "--warmup_epochs 40 --blr 1.5e-4 --weight_decay 0.05), main_pretrain.py:163-180 "
        "(lr = blr × batch/256, AdamW betas (0.9, 0.95), no wd on biases and norms), "
        "util/lr_sched.py (cosine to min_lr 0), models_mae.py:223-236 (decoder 512 × 8, 16 "
        "heads)",
    ),
}


def vit_patch_size(backbone: str) -> int | None:
    """The patch side of a ViT backbone named ``vit_<size>_patch<n>`` (None for others)."""
    match = re.fullmatch(r"vit_[a-z]+_patch(\d+)", backbone)
    return int(match.group(1)) if match else None


def get_method(name: str) -> MethodCard:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]

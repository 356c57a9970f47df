"""View recipes: declarative augmentation settings, one ``ViewRecipe`` per view.

A recipe is plain data (YAML-able); ``datasets.dali_views`` turns it into a DALI graph.
Defaults follow the SimCLR / BYOL / VICReg papers; probabilities are per sample.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class JigsawSpec(BaseModel):
    """PIRL's jigsaw view: the crop is cut into ``grid``×``grid`` cells of ``cell`` px and a
    random ``patch``×``patch`` crop is taken inside each cell; the patches come out in a random
    order, recorded per sample (see ``dali_views.ViewLoader``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grid: int = Field(3, ge=2)
    cell: int = Field(85, gt=0)
    patch: int = Field(64, gt=0)


class ViewRecipe(BaseModel):
    """How one view of an image is made (colour values are on the 0–1 pixel scale)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(224, gt=0, description="output side length in pixels")
    crop_scale: tuple[float, float] | None = Field(
        (0.08, 1.0), description="random-resized-crop area range; None = resize + centre crop"
    )
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    center_crop_fraction: float = Field(
        0.875, gt=0, le=1, description="eval views: crop side / resized shorter side"
    )
    flip_p: float = Field(0.5, ge=0, le=1)
    jitter_p: float = Field(0.8, ge=0, le=1)
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: float = Field(0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = Field(0.0, ge=0, le=1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    jigsaw: JigsawSpec | None = Field(
        None, description="cut the view into shuffled patches (colour ops apply per patch)"
    )

    @model_validator(mode="after")
    def _jigsaw_fits(self) -> ViewRecipe:
        if self.jigsaw is not None:
            if self.jigsaw.patch > self.jigsaw.cell:
                raise ValueError("jigsaw.patch must not exceed jigsaw.cell")
            if self.jigsaw.grid * self.jigsaw.cell > self.size:
                raise ValueError("jigsaw.grid × jigsaw.cell must fit in size")
        return self

    @property
    def output_size(self) -> int:
        """Side of the image(s) this view yields: the patch side for a jigsaw view."""
        return self.jigsaw.patch if self.jigsaw else self.size


def _byol_pair(**common: object) -> list[ViewRecipe]:
    """BYOL/VICReg asymmetric pair: view 1 always blurred, view 2 sometimes solarized."""
    return [
        ViewRecipe(blur_p=1.0, solarize_p=0.0, **common),
        ViewRecipe(blur_p=0.1, solarize_p=0.2, **common),
    ]


def _eval(size: int, **common: object) -> list[ViewRecipe]:
    return [
        ViewRecipe(
            size=size,
            crop_scale=None,
            flip_p=0,
            jitter_p=0,
            grayscale_p=0,
            blur_p=0,
            **common,
        )
    ]


def multicrop(num_local: int = 6, *, size: int = 224, local_size: int = 96) -> list[ViewRecipe]:
    """SwAV/DINO multi-crop: 2 global crops (area 14–100%) + ``num_local`` small ones (5–14%)."""
    common: dict[str, Any] = {"blur_p": 0.5, "solarize_p": 0.0}
    global_view = ViewRecipe(size=size, crop_scale=(0.14, 1.0), **common)
    local_view = ViewRecipe(size=local_size, crop_scale=(0.05, 0.14), **common)
    return [global_view, global_view] + [local_view] * num_local


def _pirl() -> list[ViewRecipe]:
    """PIRL: the image view, and 9 jigsaw patches of a 255 px crop (3×3 cells of 85 px, a
    random 64 px crop in each), colour-jittered per patch, without blur or flips."""
    return [
        ViewRecipe(blur_p=0.0),
        ViewRecipe(size=255, blur_p=0.0, flip_p=0.0, jigsaw=JigsawSpec()),
    ]


_CIFAR = {"size": 32, "crop_scale": (0.08, 1.0), "mean": CIFAR_MEAN, "std": CIFAR_STD}


def _pirl_cifar() -> list[ViewRecipe]:
    """PIRL scaled to 32 px images: the jigsaw crop (area 60–100%, as VISSL's
    ``crop_scale_patches``) is 3×3 cells of 10 px with an 8 px patch in each (the paper's
    64/85 patch-to-cell ratio, rounded)."""
    common: dict[str, Any] = {**_CIFAR, "blur_p": 0.0}
    jigsaw = JigsawSpec(grid=3, cell=10, patch=8)
    return [
        ViewRecipe(**common),
        ViewRecipe(**{**common, "crop_scale": (0.6, 1.0)}, flip_p=0.0, jigsaw=jigsaw),
    ]


# W-MSE (Ermolov et al. 2021): d views from one distribution, SimCLR-like augmentations.
_WMSE = {"crop_scale": (0.2, 1.0), "blur_p": 0.5}

PRESETS: dict[str, list[ViewRecipe]] = {
    "simclr": [ViewRecipe(), ViewRecipe()],
    "byol": _byol_pair(),
    "vicreg": _byol_pair(),
    "wmse": [ViewRecipe(**_WMSE)] * 2,
    "wmse4": [ViewRecipe(**_WMSE)] * 4,
    "multicrop": multicrop(),
    "pirl": _pirl(),
    "eval": _eval(224),
    # CIFAR variants: 32 px, no blur (as in solo-learn's CIFAR recipes), CIFAR statistics.
    "simclr_cifar": [ViewRecipe(blur_p=0, **_CIFAR)] * 2,
    "byol_cifar": [
        ViewRecipe(blur_p=0, solarize_p=0.0, **_CIFAR),
        ViewRecipe(blur_p=0, solarize_p=0.2, **_CIFAR),
    ],
    "wmse_cifar": [ViewRecipe(blur_p=0, **{**_CIFAR, "crop_scale": (0.2, 1.0)})] * 2,
    "wmse4_cifar": [ViewRecipe(blur_p=0, **{**_CIFAR, "crop_scale": (0.2, 1.0)})] * 4,
    "pirl_cifar": _pirl_cifar(),
    "eval_cifar": _eval(32, center_crop_fraction=1.0, mean=CIFAR_MEAN, std=CIFAR_STD),
}
PRESETS["vicreg_cifar"] = PRESETS["byol_cifar"]


def get_recipe(name: str) -> list[ViewRecipe]:
    if name not in PRESETS:
        raise KeyError(f"unknown view recipe {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


# Every ViewRecipe field, optional: what a spec may override on all views of a preset.
ViewOverrides = create_model(
    "ViewOverrides",
    __config__=ConfigDict(extra="forbid"),
    **{name: (field.annotation | None, None) for name, field in ViewRecipe.model_fields.items()},
)


def apply_overrides(recipes: list[ViewRecipe], overrides: dict[str, Any]) -> list[ViewRecipe]:
    """The recipes with ``overrides`` applied to every view, validated like any recipe."""
    return [ViewRecipe.model_validate({**r.model_dump(), **overrides}) for r in recipes]

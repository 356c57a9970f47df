"""View recipes: declarative augmentation settings, one ``ViewRecipe`` per view.

A recipe is plain data (YAML-able); both loader backends (``datasets.dali_views``,
``datasets.torch_views``) turn it into the same augmentations. Each preset follows its method's
official code, cited where it is defined; probabilities are per sample.

A spec's ``views:`` is a preset name or a list of views (``ViewEntry``: a preset's view plus
overrides, or a recipe spelled out), and ``view_overrides`` changes fields of every view or of
one (``ViewOverride``); ``resolve_views`` turns both into ``list[ViewRecipe]``. Installed packages
add presets through the entry-point group ``sslpipe.views`` (``VIEW_PLUGIN_GROUP``): the entry
point names a list of recipes (``ViewRecipe`` or mappings of its fields).

This module imports pydantic only (``sslpipe validate`` stays light).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    create_model,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
VIEW_PLUGIN_GROUP = "sslpipe.views"


MAX_SIDE = 4096  # pixels: the largest image side a view makes or a synthetic source draws


def _pair(pair: tuple[float, float]) -> str:
    return f"[{pair[0]:g}, {pair[1]:g}]"


def _ascending(pair: tuple[float, float]) -> tuple[float, float]:
    """the first at most the second"""
    if pair[0] > pair[1]:
        raise ValueError(f"{_pair(pair)}: the smaller value comes first: {_pair(pair[::-1])}")
    return pair


def _area_fractions(pair: tuple[float, float]) -> tuple[float, float]:
    """fractions of the image area in (0, 1], the first at most the second"""
    if not all(0 < value <= 1 for value in pair):
        percent = all(0 < value <= 100 for value in pair)
        hint = f"; written in percent? {_pair((pair[0] / 100, pair[1] / 100))}" if percent else ""
        raise ValueError(f"{_pair(pair)}: areas are fractions of the image, in (0, 1]{hint}")
    return _ascending(pair)


def _positive_pair(pair: tuple[float, float]) -> tuple[float, float]:
    """both greater than 0, the first at most the second"""
    if not all(value > 0 for value in pair):
        raise ValueError(f"{_pair(pair)}: both must be greater than 0")
    return _ascending(pair)


def _non_negative_pair(pair: tuple[float, float]) -> tuple[float, float]:
    """both at least 0, the first at most the second"""
    if not all(value >= 0 for value in pair):
        raise ValueError(f"{_pair(pair)}: both must be at least 0")
    return _ascending(pair)


AreaRange = Annotated[tuple[float, float], AfterValidator(_area_fractions)]
RatioRange = Annotated[tuple[float, float], AfterValidator(_positive_pair)]
SigmaRange = Annotated[tuple[float, float], AfterValidator(_non_negative_pair)]
UnitFloat = Annotated[float, Field(ge=0, le=1)]  # a pixel value on the 0-1 scale
SpreadFloat = Annotated[float, Field(gt=0, le=1)]  # a standard deviation of such values


class JigsawSpec(BaseModel):
    """PIRL's jigsaw view: the crop is cut into ``grid``×``grid`` cells of ``cell`` px and a
    random ``patch``×``patch`` crop is taken inside each cell; the patches come out in a random
    order, recorded per sample (see ``loaders.build_loader``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grid: int = Field(3, ge=2, le=16)
    cell: int = Field(85, gt=0, le=MAX_SIDE)
    patch: int = Field(64, gt=0, le=MAX_SIDE)


class ViewRecipe(BaseModel):
    """How one view of an image is made (colour values are on the 0–1 pixel scale).

    Colour jitter is torchvision's ``ColorJitter``: brightness, contrast and saturation factors
    drawn from [1 − x, 1 + x], contrast centred on the mean grey level of the image, hue shifted
    by up to ``hue`` of a turn; both backends apply them in that fixed order.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(224, gt=0, le=MAX_SIDE, description="output side length in pixels")
    crop_scale: AreaRange | None = Field(
        (0.08, 1.0), description="random-resized-crop area range; None = resize + centre crop"
    )
    crop_ratio: RatioRange = (3 / 4, 4 / 3)
    center_crop_fraction: float = Field(
        0.875, gt=0, le=1, description="eval views: crop side / resized shorter side"
    )
    interpolation: Literal["bilinear", "bicubic"] = Field(
        "bilinear", description="resampling of the crop to `size` (antialiased)"
    )
    flip_p: float = Field(0.5, ge=0, le=1)
    jitter_p: float = Field(0.8, ge=0, le=1)
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: float = Field(0.5, ge=0, le=1)
    blur_sigma: SigmaRange = (0.1, 2.0)
    solarize_p: float = Field(0.0, ge=0, le=1)
    mean: tuple[UnitFloat, UnitFloat, UnitFloat] = IMAGENET_MEAN
    std: tuple[SpreadFloat, SpreadFloat, SpreadFloat] = IMAGENET_STD
    jigsaw: JigsawSpec | None = Field(
        None, description="cut the view into shuffled patches (colour ops and flips per patch)"
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


def _simclr(strength: float, **common: Any) -> ViewRecipe:
    """SimCLR's view (google-research/simclr ``data_util.py``): ``color_jitter`` with
    brightness/contrast/saturation 0.8·s and hue 0.2·s applied with p 0.8, grayscale p 0.2
    (``random_color_jitter``), ``crop_and_resize`` area 0.08–1, ratio 3/4–4/3, bicubic
    (``resize_bicubic``), blur σ ∈ [0.1, 2] with p 0.5; no solarization. ``run.py`` sets
    s = 1.0 (ImageNet); the README's CIFAR-10 command s = 0.5 and ``--use_blur=False``."""
    return ViewRecipe(
        **{
            "brightness": 0.8 * strength,
            "contrast": 0.8 * strength,
            "saturation": 0.8 * strength,
            "hue": 0.2 * strength,
            "interpolation": "bicubic",
            **common,
        }
    )


def _byol_pair(**common: Any) -> list[ViewRecipe]:
    """BYOL's asymmetric pair (google-deepmind/deepmind-research ``byol/utils/augmentations.py``
    ``augment_config``; bicubic resize in ``byol/utils/dataset.py``): jitter 0.4/0.4/0.2/0.1
    with p 0.8, grayscale p 0.2, view 1 always blurred, view 2 blurred with p 0.1 and
    solarized with p 0.2. VICReg uses the same pair (facebookresearch/vicreg
    ``augmentations.py`` ``TrainTransform``, ``InterpolationMode.BICUBIC``)."""
    common = {"interpolation": "bicubic", **common}
    return [
        ViewRecipe(**{"blur_p": 1.0, "solarize_p": 0.0, **common}),
        ViewRecipe(**{"blur_p": 0.1, "solarize_p": 0.2, **common}),
    ]


def _simsiam(**common: Any) -> ViewRecipe:
    """SimSiam's view, which spectral contrastive learning trains with
    (jhaochenz/spectral_contrastive_learning ``augmentations/simsiam_aug.py``
    ``SimSiamTransform``, as facebookresearch/simsiam ``main_simsiam.py:230``): crop area 0.2–1,
    jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale p 0.2, blur p 0.5 (0 for 32 px images),
    torchvision's default bilinear resize."""
    return ViewRecipe(**{"crop_scale": (0.2, 1.0), "saturation": 0.4, "blur_p": 0.5, **common})


def _eval(size: int, **common: Any) -> list[ViewRecipe]:
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


def dino_crops(
    num_local: int = 10,
    *,
    size: int = 224,
    local_size: int = 96,
    global_scale: tuple[float, float] = (0.4, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.4),
    blur: tuple[float, float, float] = (1.0, 0.1, 0.5),
    **common: Any,
) -> list[ViewRecipe]:
    """DINO's multi-crop (facebookresearch/dino ``main_dino.py:419-464``
    ``DataAugmentationDINO``): flip, jitter 0.4/0.4/0.2/0.1 with p 0.8 and grayscale p 0.2 on
    every crop, bicubic; blur (``utils.GaussianBlur``, σ 0.1–2) with p ``blur`` = (global crop
    1, global crop 2, local crops) = (1, 0.1, 0.5); global crop 2 solarized with p 0.2. Areas:
    ``main_dino.py:108-117``; 10 local crops as the paper's ViT runs (the argument's default
    is 8). The global crops come first: the teacher sees them only."""
    common = {"interpolation": "bicubic", **common}
    first, second, local = blur
    global_view = {**common, "size": size, "crop_scale": global_scale}
    return [
        ViewRecipe(**global_view, blur_p=first, solarize_p=0.0),
        ViewRecipe(**global_view, blur_p=second, solarize_p=0.2),
        *[ViewRecipe(**common, size=local_size, crop_scale=local_scale, blur_p=local)] * num_local,
    ]


def _mae(**common: Any) -> ViewRecipe:
    """MAE's one view (facebookresearch/mae ``main_pretrain.py:123-127``): bicubic random
    resized crop of area 0.2–1, flip; no colour augmentation."""
    return ViewRecipe(
        **{
            "crop_scale": (0.2, 1.0),
            "interpolation": "bicubic",
            "jitter_p": 0.0,
            "grayscale_p": 0.0,
            "blur_p": 0.0,
            **common,
        }
    )


# PIRL as VISSL trains it (facebookresearch/vissl
# configs/config/pretrain/pirl/pirl_jigsaw_4node_resnet50.yaml): ImgPilToPatchesAndImage
# (vissl/data/ssl_transforms/img_pil_to_patches_and_image.py) makes the image view, a
# RandomResizedCrop of area 0.08–1 to 224, and the patches from a second RandomResizedCrop of
# area 0.6–1 to 255, cut into 3×3 cells of 85 px with a 64 px patch at a random offset in each
# (img_patches_tensor.py, patch_jitter 21), in a random order. ColorJitter(0.4, 0.4, 0.4, 0.2)
# — not wrapped in RandomApply, so always applied —, RandomGrayscale(0.2) and
# RandomHorizontalFlip(0.5) then apply to the image and to each patch on its own; no blur;
# torchvision's default bilinear resize. VISSL's ImgPilRandomPhotometric (posterize,
# sharpness, solarize at a random threshold, autocontrast, together with p 0.66) is left out:
# neither backend has posterize/sharpness/autocontrast operators (README, "Data").
_PIRL_COLOUR = {"jitter_p": 1.0, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4,
                "hue": 0.2, "grayscale_p": 0.2, "blur_p": 0.0, "flip_p": 0.5}  # fmt: skip


def _pirl() -> list[ViewRecipe]:
    return [
        ViewRecipe(**_PIRL_COLOUR),
        ViewRecipe(size=255, crop_scale=(0.6, 1.0), jigsaw=JigsawSpec(), **_PIRL_COLOUR),
    ]


# No crop_scale: each CIFAR preset keeps its method's area (SimSiam and W-MSE 0.2–1).
_CIFAR = {"size": 32, "mean": CIFAR_MEAN, "std": CIFAR_STD}


def _pirl_cifar() -> list[ViewRecipe]:
    """PIRL scaled to 32 px images: the jigsaw crop (area 60–100%, as VISSL's
    ``crop_scale_patches``) is 3×3 cells of 10 px with an 8 px patch in each (the paper's
    64/85 patch-to-cell ratio, rounded)."""
    common: dict[str, Any] = {**_CIFAR, **_PIRL_COLOUR}
    jigsaw = JigsawSpec(grid=3, cell=10, patch=8)
    return [
        ViewRecipe(**common),
        ViewRecipe(**{**common, "crop_scale": (0.6, 1.0)}, jigsaw=jigsaw),
    ]


def _wmse(strength: float, crop_min: float, grayscale_p: float, **common: Any) -> ViewRecipe:
    """W-MSE's view (Ermolov et al. 2021; htdt/self-supervised ``datasets/transforms.py``
    ``aug_transform``, bicubic ``RandomResizedCrop``): jitter ``strength``·(1, 1, 1, 0.25) with
    p 0.8, grayscale, flip p 0.5, no blur, no solarization. ``cfg.py``'s defaults (CIFAR,
    Tiny ImageNet): strength 0.4, crop area 0.2–1, grayscale p 0.1; the README's ImageNet-100
    command: ``--crop_s0 0.08 --cj0 0.8 --cj1 0.8 --cj2 0.8 --cj3 0.2 --gs_p 0.2``. The
    official code jitters before it crops; both our backends crop first (README, "Views")."""
    return ViewRecipe(
        **{
            **common,
            "crop_scale": (crop_min, 1.0),
            "brightness": strength,
            "contrast": strength,
            "saturation": strength,
            "hue": strength / 4,
            "grayscale_p": grayscale_p,
            "blur_p": 0.0,
            "interpolation": "bicubic",
        }
    )


# CIFAR variants: 32 px, no blur (as solo-learn's CIFAR recipes and SimCLR's CIFAR command).
_NO_BLUR_CIFAR = {**_CIFAR, "blur_p": 0.0}

PRESETS: dict[str, Sequence[ViewRecipe | Mapping[str, Any]]] = {
    "simclr": [_simclr(1.0)] * 2,
    "byol": _byol_pair(),
    "vicreg": _byol_pair(),
    "simsiam": [_simsiam()] * 2,
    "wmse": [_wmse(0.8, 0.08, 0.2)] * 2,
    "wmse4": [_wmse(0.8, 0.08, 0.2)] * 4,
    "multicrop": multicrop(),
    "pirl": _pirl(),
    "dino": dino_crops(),
    "mae": [_mae()],
    "eval": _eval(224),
    "simclr_cifar": [_simclr(0.5, **_NO_BLUR_CIFAR)] * 2,
    "byol_cifar": _byol_pair(**_NO_BLUR_CIFAR),
    "vicreg_cifar": _byol_pair(**_NO_BLUR_CIFAR),
    "simsiam_cifar": [_simsiam(**_NO_BLUR_CIFAR)] * 2,
    "wmse_cifar": [_wmse(0.4, 0.2, 0.1, **_CIFAR)] * 2,
    "wmse4_cifar": [_wmse(0.4, 0.2, 0.1, **_CIFAR)] * 4,
    "pirl_cifar": _pirl_cifar(),
    # 32 px globals, 16 px locals (DINO's 224/96 ratio, rounded to ViT/4 patches), no blur.
    "dino_cifar": dino_crops(local_size=16, blur=(0.0, 0.0, 0.0), **_CIFAR),
    "mae_cifar": [_mae(**_CIFAR)],
    "eval_cifar": _eval(32, center_crop_fraction=1.0, mean=CIFAR_MEAN, std=CIFAR_STD),
}


def get_recipe(name: str) -> list[ViewRecipe]:
    """The views of preset ``name`` (built-in or added by a plugin), validated."""
    if name not in PRESETS:
        raise KeyError(f"unknown view recipe {name!r}; choose one of {sorted(PRESETS)}")
    return [ViewRecipe.model_validate(view) for view in PRESETS[name]]


def _known_preset(name: str) -> str:
    """``name`` if it is a registered preset; otherwise pydantic's ``literal_error`` (so a spec
    gets the usual "not allowed; did you mean" line listing the presets)."""
    if name not in PRESETS:
        names = [repr(n) for n in PRESETS]
        expected = f"{', '.join(names[:-1])} or {names[-1]}"
        raise PydanticCustomError(
            "literal_error", "Input should be {expected}", {"expected": expected}
        )
    return name


class _GivenFields(BaseModel):
    """Optional recipe fields that remember which were written: an explicit ``null`` (e.g.
    ``crop_scale: null``, resize + centre crop) is a value, an absent key is not, and
    ``model_dump`` gives back only what was written, so a dump validates to the same thing."""

    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _only_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}

    def given(self, *skip: str) -> dict[str, Any]:
        """The recipe fields written (``skip``: fields that are not recipe fields)."""
        return {name: getattr(self, name) for name in self.model_fields_set if name not in skip}


# Every ViewRecipe field, optional: what a spec may change on a view.
ViewOverrides = create_model(
    "ViewOverrides",
    __base__=_GivenFields,
    **{
        name: (
            # the field's type with its bounds (Annotated[(type, *constraints)]), or None
            (Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation)
            | None,
            Field(None, description=field.description),
        )
        for name, field in ViewRecipe.model_fields.items()
    },
)


def apply_overrides(recipes: Sequence[ViewRecipe], overrides: dict[str, Any]) -> list[ViewRecipe]:
    """The recipes with ``overrides`` applied to every view, validated like any recipe."""
    return [ViewRecipe.model_validate({**r.model_dump(), **overrides}) for r in recipes]


class ViewOverride(ViewOverrides):  # type: ignore[misc, valid-type]
    """A spec's ``view_overrides``: fields to change on every view, or with ``view: i`` only on
    view i (0-based)."""

    view: int | None = Field(None, ge=0, description="the one view to change (0-based)")

    def apply(self, recipes: Sequence[ViewRecipe]) -> list[ViewRecipe]:
        if self.view is not None and self.view >= len(recipes):
            raise ValueError(f"view_overrides.view {self.view}: there are {len(recipes)} views")
        fields = self.given("view")
        return [
            ViewRecipe.model_validate({**recipe.model_dump(), **fields})
            if self.view in (None, i)
            else recipe
            for i, recipe in enumerate(recipes)
        ]


class ViewEntry(ViewOverrides):  # type: ignore[misc, valid-type]
    """One item of a spec's ``views:`` list.

    ``{preset: vicreg}`` is every view of ``vicreg``; ``{preset: vicreg, index: 1,
    solarize_p: 0.3}`` its view 1 with one field changed (a field set without ``index``
    changes every view of the preset); without ``preset`` the entry is a recipe spelled out
    (unset fields take ``ViewRecipe``'s defaults). ``repeat: n`` puts the view(s) in n times.
    """

    preset: Annotated[str, AfterValidator(_known_preset)] | None = Field(
        None, description="take the view(s) from this preset"
    )
    index: int | None = Field(None, ge=0, description="which of the preset's views; all if unset")
    repeat: int = Field(1, ge=1, description="how many times the view(s) appear")

    @model_validator(mode="after")
    def _fits(self) -> ViewEntry:
        if self.preset is None and self.index is not None:
            raise ValueError("'index' picks a view of a preset: set 'preset' too")
        self.recipes()
        return self

    def recipes(self) -> list[ViewRecipe]:
        fields = self.given("preset", "index", "repeat")
        if self.preset is None:
            return [ViewRecipe.model_validate(fields)] * self.repeat
        views = get_recipe(self.preset)
        if self.index is not None:
            if self.index >= len(views):
                raise ValueError(
                    f"index {self.index}: preset {self.preset!r} has {len(views)} views"
                )
            views = [views[self.index]]
        return apply_overrides(views, fields) * self.repeat


def _preset_as_entry(value: Any) -> Any:
    """``views: NAME`` is shorthand for ``views: [{preset: NAME}]``."""
    return [{"preset": _known_preset(value)}] if isinstance(value, str) else value


# The type of a spec's ``views:``: a preset name or a list of ViewEntry (always a list after
# validation).
Views = Annotated[
    list[ViewEntry],
    BeforeValidator(_preset_as_entry, json_schema_input_type=str | list[ViewEntry]),
]


def resolve_views(
    views: str | Sequence[ViewEntry], overrides: ViewOverride | None = None
) -> list[ViewRecipe]:
    """A spec's ``views:`` (a preset name, or validated ``ViewEntry`` items) with its
    ``view_overrides`` applied: the recipes a loader takes."""
    if isinstance(views, str):
        recipes = get_recipe(views)
    else:
        recipes = [recipe for entry in views for recipe in entry.recipes()]
    return recipes if overrides is None else overrides.apply(recipes)

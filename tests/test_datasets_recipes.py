"""Views as data: a spec's ``views:`` (preset name or list of entries) and ``view_overrides``
resolve to the recipes meant, dump and validate back to the same thing, and report mistakes
the way the rest of a spec does; presets added at run time (plugins) are usable."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from sslpipe.datasets.recipes import (
    PRESETS,
    ViewOverride,
    ViewRecipe,
    Views,
    get_recipe,
    resolve_views,
)


class Spec(BaseModel):
    views: Views | None = None
    view_overrides: ViewOverride = ViewOverride()

    def recipes(self) -> list[ViewRecipe]:
        return resolve_views(self.views or "vicreg", self.view_overrides)


def _errors(**spec) -> list[tuple[tuple, str, str]]:
    with pytest.raises(ValidationError) as caught:
        Spec.model_validate(spec)
    return [(e["loc"], e["type"], e["msg"]) for e in caught.value.errors()]


def test_a_preset_name_and_its_entry_form_are_the_same_views() -> None:
    assert Spec(views="pirl").recipes() == get_recipe("pirl")
    assert Spec(views=[{"preset": "pirl"}]).recipes() == get_recipe("pirl")
    assert Spec().recipes() == get_recipe("vicreg")


def test_entries_pick_views_override_fields_and_repeat() -> None:
    spec = Spec(views=[
        {"preset": "vicreg", "index": 1, "solarize_p": 0.3},
        {"preset": "multicrop", "index": 2, "repeat": 3, "size": 64},
        {"size": 48, "crop_scale": None},  # spelled out; crop_scale None = centre crop
    ])  # fmt: skip
    recipes = spec.recipes()
    assert len(recipes) == 5
    assert recipes[0] == get_recipe("vicreg")[1].model_copy(update={"solarize_p": 0.3})
    assert recipes[1:4] == [get_recipe("multicrop")[2].model_copy(update={"size": 64})] * 3
    assert recipes[4] == ViewRecipe(size=48, crop_scale=None)


def test_view_overrides_change_every_view_or_one() -> None:
    every = Spec(views="vicreg", view_overrides={"size": 96}).recipes()
    assert [r.size for r in every] == [96, 96]
    one = Spec(views="vicreg", view_overrides={"view": 1, "blur_p": 0.0}).recipes()
    assert [r.blur_p for r in one] == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"view_overrides\.view 2: there are 2 views"):
        Spec(views="vicreg", view_overrides={"view": 2, "size": 8}).recipes()


def test_a_dump_validates_back_to_the_same_spec() -> None:
    """Only the fields written are dumped, so an explicit null stays a value and an absent
    field stays absent (what a config crossing a process boundary needs)."""
    spec = Spec(views=[{"preset": "eval", "crop_scale": None}, {"size": 32}],
                view_overrides={"view": 0, "size": 160})  # fmt: skip
    dumped = spec.model_dump(mode="json")
    assert dumped["views"] == [{"preset": "eval", "crop_scale": None}, {"size": 32}]
    again = Spec.model_validate(dumped)
    assert again == spec and again.recipes() == spec.recipes()


def test_mistakes_are_reported_where_they_are() -> None:
    (loc, kind, message), = _errors(views="vicregg")  # fmt: skip
    assert (loc, kind) == (("views",), "literal_error") and "'vicreg'" in message
    (loc, kind, _), = _errors(views=[{"preset": "vicreg"}, {"preset": "nope"}])  # fmt: skip
    assert (loc, kind) == (("views", 1, "preset"), "literal_error")
    (loc, kind, _), = _errors(views=[{"siz": 3}])  # fmt: skip
    assert (loc, kind) == (("views", 0, "siz"), "extra_forbidden")
    (loc, _, message), = _errors(views=[{"preset": "vicreg", "index": 2}])  # fmt: skip
    assert loc == ("views", 0) and "preset 'vicreg' has 2 views" in message
    (loc, _, message), = _errors(views=[{"index": 1, "size": 8}])  # fmt: skip
    assert "set 'preset' too" in message
    (loc, _, message), = _errors(views=[{"preset": "vicreg", "hue": 0.7}])  # fmt: skip
    assert loc == ("views", 0, "hue")


def test_a_preset_added_at_run_time_is_validated_and_usable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a ``sslpipe.views`` entry point adds: a list of recipes or of their fields."""
    monkeypatch.setitem(PRESETS, "tiny_pair", [{"size": 16, "blur_p": 0}, ViewRecipe(size=8)])
    assert [r.size for r in Spec(views="tiny_pair").recipes()] == [16, 8]
    monkeypatch.setitem(PRESETS, "broken", [{"size": -1}])
    with pytest.raises(ValidationError):
        Spec(views="broken")


def test_cifar_presets_keep_their_methods_crop_area() -> None:
    """Each CIFAR preset crops the area of its method's official recipe (SimSiam 0.2–1,
    main_simsiam.py:230; DINO 0.4–1 / 0.05–0.4; MAE 0.2–1; the others 0.08–1)."""
    areas = {
        name: {r.crop_scale for r in get_recipe(name)}
        for name in ("simclr_cifar", "byol_cifar", "vicreg_cifar", "simsiam_cifar",
                     "wmse_cifar", "dino_cifar", "mae_cifar")
    }  # fmt: skip
    assert areas == {
        "simclr_cifar": {(0.08, 1.0)},
        "byol_cifar": {(0.08, 1.0)},
        "vicreg_cifar": {(0.08, 1.0)},
        "simsiam_cifar": {(0.2, 1.0)},
        "wmse_cifar": {(0.2, 1.0)},
        "dino_cifar": {(0.4, 1.0), (0.05, 0.4)},
        "mae_cifar": {(0.2, 1.0)},
    }

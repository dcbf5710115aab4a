"""Scalar logic written once: LR schedules and prunable-set selection by name."""

import pytest

from twinsparse.reference.prunable import select_prunable
from twinsparse.reference.schedules import lr_at

NAMES = ["conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight", "fc.weight"]


def test_cosine_and_step_schedules():
    assert lr_at(0, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_at(50, 100, 0.1, "cosine") == pytest.approx(0.05)
    assert lr_at(100, 100, 0.1, "cosine") == pytest.approx(0.0, abs=1e-15)
    assert [lr_at(s, 100, 0.1, "step") for s in (49, 50, 74, 75)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    assert lr_at(7, 10, 0.3, "constant") == 0.3


def test_schedule_bad_input():
    with pytest.raises(ValueError, match="schedule='linear'"):
        lr_at(0, 10, 0.1, "linear")
    with pytest.raises(ValueError, match="step=11"):
        lr_at(11, 10, 0.1, "cosine")
    with pytest.raises(ValueError, match="total_steps=0"):
        lr_at(0, 0, 0.1, "cosine")


def test_select_prunable_tokens_patterns_and_modules():
    assert select_prunable(NAMES) == NAMES
    assert select_prunable(NAMES, exclude=["first", "last"]) == NAMES[1:3]
    assert select_prunable(NAMES, include=["layer1.*"]) == NAMES[1:3]
    assert select_prunable(NAMES, exclude=["fc"]) == NAMES[:3]  # module name


def test_select_prunable_errors():
    with pytest.raises(ValueError, match="'layer9.*' matches no prunable weight"):
        select_prunable(NAMES, exclude=["layer9.*"])
    with pytest.raises(ValueError, match="empty"):
        select_prunable(NAMES, include=["fc"], exclude=["last"])
    with pytest.raises(ValueError, match="empty"):
        select_prunable([])
    with pytest.raises(TypeError, match="list"):
        select_prunable(NAMES, exclude="fc")
    with pytest.raises(TypeError, match="strings"):
        select_prunable(NAMES, exclude=[3])

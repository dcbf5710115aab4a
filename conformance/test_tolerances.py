"""The comparison rules of conformance/tolerances.py and registry.compare_exact tell noise from a difference."""
import numpy as np
import pytest

from twinsparse.conformance.registry import compare_exact
from twinsparse.conformance.tolerances import DERIVED, assert_derived_close


def test_derived_tolerance_accepts_summation_order_noise():
    # the values a GPU run logged against the reference's: one ulp apart
    assert_derived_close({"2": {"0.05": 3.4, "0.2": 3.4499999999999997}},
                         {"2": {"0.05": 3.4000000000000004, "0.2": 3.45}}, "interpolation")
    assert_derived_close(1.2345678901234, 1.2345678901234 * (1 + 0.5 * DERIVED["rel"]))
    assert_derived_close([0.0, 2, "x", None], [0.5 * DERIVED["abs"], 2, "x", None])


@pytest.mark.parametrize("ref,acc", [
    (3.4, 3.4 + 1 / 10_000),                          # one sample more correct of 10^4: a real difference
    ({"2": {"0.05": 3.4}}, {"2": {"0.05": 3.4 + 1 / 1000}}),
    ({"2": {"0.05": 3.4}}, {"2": {"0.1": 3.4}}),      # another candidate alpha
    ({"2": {"0.05": 3.4}}, {"2": {"0.05": 3.4}, "3": {}}),
    (0.6931471805599453, 0.6931471805599453 * (1 + 1e-7)),  # a loss off in the 7th digit
    ([1.0, 2.0], [1.0]),
    (5, 6),
    (float("nan"), float("nan")),
])
def test_derived_tolerance_rejects_real_differences(ref, acc):
    with pytest.raises(AssertionError):
        assert_derived_close(ref, acc)


def test_compare_exact_is_bitwise():
    compare_exact({"acc": 0.567, "codes": np.array([7, 4], np.int32)},
                  {"acc": 567 / 1000, "codes": np.array([7, 4], np.int64)}, np.float64)
    for ref, acc in [(0.567, 0.5670000000000001), (np.float32([1.7142857]), np.float32([1.2857144])),
                     (np.float64([0.0]), np.float64([-0.0])), ({"a": 1.0}, {"b": 1.0}), ([0.5], [0.5, 0.5]),
                     (np.array([1, 2]), np.array([1.0, 2.0]))]:
        with pytest.raises(AssertionError):
            compare_exact(ref, acc, np.float64)

"""Host <-> device copies of `Tensor` (CPU build): shapes kept as given, 0-d included."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import Tensor


def test_a_0d_array_stays_0d() -> None:
    t = Tensor.from_numpy(np.array(7, dtype=np.int32), "cpu")
    assert t.shape == () and int(t.numpy()) == 7
    t.copy_from_numpy(np.int32(9))  # e.g. resetting random_sample's scalar output
    assert int(t.numpy()) == 9


def test_a_strided_source_is_copied_in_its_logical_order() -> None:
    src = np.arange(12, dtype=np.float32).reshape(3, 4).T  # not C-contiguous
    t = Tensor.from_numpy(src, "cpu")
    np.testing.assert_array_equal(t.numpy(), src)  # a copy: exact
    t.copy_from_numpy(src[::-1])
    np.testing.assert_array_equal(t.numpy(), src[::-1])


def test_copy_from_numpy_refuses_another_shape() -> None:
    t = Tensor.from_numpy(np.zeros((2, 3), np.float32), "cpu")
    with pytest.raises(ValueError, match=r"shape mismatch: tensor \(2, 3\), array \(3, 2\)"):
        t.copy_from_numpy(np.zeros((3, 2), np.float32))

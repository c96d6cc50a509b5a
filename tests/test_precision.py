"""The one upcast rule: half computes in float32, float32/64 as they are."""
import pytest
import torch

from mmloss.precision import compute_dtype, restore_dtype, upcast


@pytest.mark.parametrize('dtypes,expected', [
    ((torch.float16, ), torch.float32),
    ((torch.bfloat16, ), torch.float32),
    ((torch.float32, ), torch.float32),
    ((torch.float64, ), torch.float64),
    ((torch.bool, ), torch.float32),
    ((torch.int64, ), torch.float32),
    ((torch.float16, torch.float64), torch.float64),
    ((torch.bfloat16, torch.float16), torch.float32),
])
def test_compute_dtype(dtypes, expected):
    tensors = [torch.zeros(2, dtype=dtype) for dtype in dtypes]
    assert compute_dtype(*tensors) == expected
    assert all(t.dtype == expected for t in upcast(*tensors))


def test_restore_dtype_casts_back_only_when_needed():
    half = torch.ones(3, dtype=torch.float16)
    value = upcast(half)[0] * 300
    back = restore_dtype(value, half)
    assert back.dtype == torch.float16 and back[0].item() == 300
    same = torch.ones(2)
    assert restore_dtype(same, same) is same

"""kernels.int6_layout: the documented 4-in-3-bytes int6 layout, exact for every value, odd widths, and bad input."""
import pytest
import torch

from kernels.int6_layout import INT6_MAX, INT6_MIN, pack_int6, packed_row_bytes, unpack_int6

ALL_VALUES = torch.arange(INT6_MIN, INT6_MAX + 1, dtype=torch.int8)  # all 64 int6 values


@pytest.mark.parametrize("k", [1, 3, 4, 5, 7, 130])
def test_every_value_round_trips_on_odd_widths(k):
    g = torch.Generator().manual_seed(k)
    rows = (64 + k - 1) // k + 2  # enough rows that all 64 values appear at every column residue
    q = ALL_VALUES.repeat((rows * k) // 64 + 1)[: rows * k]
    q = q[torch.randperm(q.numel(), generator=g)].reshape(rows, k)
    q[0, 0], q[-1, -1] = INT6_MIN, INT6_MAX
    packed = pack_int6(q)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, packed_row_bytes(k))
    out = unpack_int6(packed, k)
    assert out.dtype == torch.int8 and torch.equal(out, q)


def test_each_value_at_each_slot_of_a_group():
    for slot in range(4):
        q = torch.zeros(64, 4, dtype=torch.int8)
        q[:, slot] = ALL_VALUES
        assert torch.equal(unpack_int6(pack_int6(q), 4), q)


def test_bit_layout_matches_the_documentation():
    q = torch.tensor([[-32, 31, 0, 5, -1]], dtype=torch.int8)
    u = [0, 63, 32, 37]
    word = u[0] | u[1] << 6 | u[2] << 12 | u[3] << 18
    pad_word = 31 | 32 << 6 | 32 << 12 | 32 << 18  # -1 -> 31, padding is q = 0 (u = 32)
    expected = [word & 0xFF, word >> 8 & 0xFF, word >> 16 & 0xFF,
                pad_word & 0xFF, pad_word >> 8 & 0xFF, pad_word >> 16 & 0xFF]
    assert pack_int6(q).tolist() == [expected]


def test_packed_row_bytes():
    assert [packed_row_bytes(k) for k in (1, 4, 5, 8, 130, 512, 1536)] == [3, 3, 6, 6, 99, 384, 1152]


def test_random_round_trip_wide_int_dtypes():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(INT6_MIN, INT6_MAX + 1, (7, 130), generator=g, dtype=torch.int64)
    assert torch.equal(unpack_int6(pack_int6(q), 130).long(), q)


@pytest.mark.parametrize("bad", [INT6_MAX + 1, INT6_MIN - 1, 127])
def test_out_of_range_values_are_rejected(bad):
    q = torch.zeros(2, 5, dtype=torch.int32)
    q[1, 3] = bad
    with pytest.raises(ValueError, match="outside"):
        pack_int6(q)


def test_bad_shapes_and_dtypes_are_rejected():
    with pytest.raises(ValueError, match="2-D"):
        pack_int6(torch.zeros(5, dtype=torch.int8))
    with pytest.raises(ValueError, match="uint8"):
        unpack_int6(torch.zeros(2, 3, dtype=torch.int8), 4)
    with pytest.raises(ValueError, match="does not hold"):
        unpack_int6(torch.zeros(2, 6, dtype=torch.uint8), 4)

import numpy as np
import pytest

from hashindex.core.codes import bit_balance, check_bits, hamming, pack, unpack
from hashindex.core.errors import InputError


@pytest.mark.parametrize("bits", [8, 16, 64, 1024])
def test_check_bits_accepts_multiples_of_8(bits):
    assert check_bits(bits) == bits


@pytest.mark.parametrize("bits", [0, 7, 12, 1032, -8, 2.5])
def test_check_bits_rejects(bits):
    with pytest.raises(InputError, match="bits"):
        check_bits(bits)


def test_pack_is_big_bit_order_packbits(rng):
    z = rng.standard_normal((5, 32))
    codes = pack(z)
    assert codes.dtype == np.uint8 and codes.shape == (5, 4) and codes.flags.c_contiguous
    # First bit is the most significant bit of the first byte.
    z1 = np.full((1, 8), -1.0)
    z1[0, 0] = 1.0
    assert pack(z1)[0, 0] == 0b10000000
    np.testing.assert_array_equal(unpack(codes), (z > 0).astype(np.uint8))


def test_pack_rejects_bad_widths():
    with pytest.raises(InputError):
        pack(np.zeros((2, 12)))
    with pytest.raises(InputError):
        pack(np.zeros(16))


def test_hamming_matches_bit_count(rng):
    a = rng.integers(0, 256, (7, 8), dtype=np.uint8)
    b = rng.integers(0, 256, (9, 8), dtype=np.uint8)
    ref = np.array([[sum(bin(int(x) ^ int(y)).count("1") for x, y in zip(p, q)) for q in b] for p in a])
    np.testing.assert_array_equal(hamming(a, b), ref)


def test_bit_balance():
    codes = pack(np.array([[1.0] * 8 + [-1.0] * 8, [1.0] * 8 + [1.0] * 8]))
    np.testing.assert_allclose(bit_balance(codes), [1.0] * 8 + [0.5] * 8)

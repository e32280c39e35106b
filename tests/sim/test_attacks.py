"""Each attack produces what its paper defines."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from gossamer.errors import ConfigError
from gossamer.sim.attacks import ATTACK_NAMES, alie_z, flip_labels, make_attack


def _honest(h: int = 6, d: int = 5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(h, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_names() -> None:
    assert set(ATTACK_NAMES) == {"signflip", "ipm", "alie", "gaussian", "labelflip", "mimic", "freerider"}
    for name in ATTACK_NAMES:
        attack = make_attack(name)
        assert attack.data_poisoning == (name == "labelflip")


def test_unknown_name_lists_accepted() -> None:
    with pytest.raises(ConfigError) as err:
        make_attack("lie")
    for name in ATTACK_NAMES:
        assert name in str(err.value)
    with pytest.raises(ConfigError):
        make_attack("ipm:stale")
    with pytest.raises(ConfigError, match="takes"):
        make_attack("ipm", eps=0.5)
    with pytest.raises(ConfigError):
        make_attack("gaussian", sigma=0.0)
    with pytest.raises(ConfigError):
        make_attack("mimic", target=-1)


def test_signflip() -> None:
    honest = _honest()
    out = make_attack("signflip").craft(honest, 3, generator=_gen())
    assert torch.equal(out, (-honest.mean(0)).expand(3, -1))
    own = torch.arange(5, dtype=torch.float64)
    out = make_attack("signflip").craft(honest, 2, generator=_gen(), own=own)
    assert torch.equal(out, (-own).expand(2, -1))
    own2 = torch.randn(2, 5, dtype=torch.float64, generator=_gen(1))
    out = make_attack("signflip", scale=4.0).craft(honest, 2, generator=_gen(), own=own2)
    assert torch.equal(out, -4.0 * own2)


@pytest.mark.parametrize("epsilon", [None, 0.5, 100.0])
def test_ipm_is_minus_epsilon_times_mean(epsilon: float | None) -> None:
    honest = _honest()
    attack = make_attack("ipm") if epsilon is None else make_attack("ipm", epsilon=epsilon)
    eps = 0.1 if epsilon is None else epsilon
    out = attack.craft(honest, 4, generator=_gen())
    assert out.shape == (4, 5)
    torch.testing.assert_close(out, (-eps * honest.mean(0)).expand(4, -1))
    # inner product with the honest mean is negative: the point of the attack
    assert float(out[0] @ honest.mean(0)) < 0


def test_alie_z_matches_the_paper_formula() -> None:
    for n, f in [(50, 12), (10, 2), (20, 4), (100, 20)]:
        s = math.floor(n / 2 + 1) - f
        assert alie_z(n, f) == NormalDist().inv_cdf((n - s) / n)
    # n = 50, f = 12: s = 14, z = Phi^-1(36/50) ~ 0.583
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-4)
    # a Byzantine majority makes s <= 0 and (n - s)/n >= 1: no finite z
    with pytest.raises(ConfigError, match="outside"):
        alie_z(10, 6)

def test_alie_is_mean_minus_z_std_per_coordinate() -> None:
    honest = _honest(h=16, d=7)
    out = make_attack("alie").craft(honest, 4, generator=_gen())
    z = alie_z(20, 4)
    expected = honest.mean(0) - z * honest.std(0, correction=1)
    assert out.shape == (4, 7)
    for row in out:
        torch.testing.assert_close(row, expected)
    # explicit z overrides
    out = make_attack("alie", z=1.5).craft(honest, 2, generator=_gen())
    torch.testing.assert_close(out[1], honest.mean(0) - 1.5 * honest.std(0))


def test_gaussian_is_seeded_noise_with_sigma() -> None:
    honest = _honest(d=20000)
    a = make_attack("gaussian", sigma=3.0)
    out = a.craft(honest, 2, generator=_gen(5))
    assert torch.equal(out, a.craft(honest, 2, generator=_gen(5)))
    assert not torch.equal(out, a.craft(honest, 2, generator=_gen(6)))
    assert float(out.std()) == pytest.approx(3.0, rel=0.03)
    assert abs(float(out.mean())) < 0.1
    centred = make_attack("gaussian", sigma=1e-9, around_mean=True).craft(honest, 1, generator=_gen())
    torch.testing.assert_close(centred[0], honest.mean(0), atol=1e-6, rtol=0)


def test_labelflip() -> None:
    labels = torch.tensor([0, 1, 2, 9, 5])
    assert torch.equal(flip_labels(labels, 10), torch.tensor([9, 8, 7, 0, 4]))
    assert torch.equal(flip_labels(flip_labels(labels, 10), 10), labels)
    with pytest.raises(ConfigError):
        flip_labels(torch.tensor([10]), 10)
    a = make_attack("labelflip")
    assert a.data_poisoning
    with pytest.raises(ConfigError, match="data poisoning"):
        a.craft(_honest(), 1, generator=_gen())
    own = torch.ones(5, dtype=torch.float64)
    assert torch.equal(a.craft(_honest(), 2, generator=_gen(), own=own), torch.ones(2, 5, dtype=torch.float64))


def test_mimic_copies_a_fixed_honest_peer() -> None:
    honest = _honest()
    out = make_attack("mimic").craft(honest, 3, generator=_gen())
    assert all(torch.equal(r, honest[0]) for r in out)
    out = make_attack("mimic", target=4).craft(honest, 2, generator=_gen())
    assert all(torch.equal(r, honest[4]) for r in out)
    with pytest.raises(ConfigError):
        make_attack("mimic", target=6).craft(honest, 1, generator=_gen())


def test_mimic_maxvar_picks_the_extreme_along_the_top_direction() -> None:
    # spread mostly along the first axis; row 3 is farthest along it
    honest = torch.tensor(
        [[0.0, 0.1], [1.0, -0.1], [-1.0, 0.0], [5.0, 0.2], [-2.0, 0.0]], dtype=torch.float64
    )
    out = make_attack("mimic", target="maxvar").craft(honest, 2, generator=_gen())
    assert torch.equal(out, honest[3].expand(2, -1))


def test_freerider() -> None:
    honest = _honest()
    assert torch.equal(make_attack("freerider").craft(honest, 2, generator=_gen()), torch.zeros(2, 5, dtype=torch.float64))
    stale = make_attack("freerider:stale")
    assert stale.name == "freerider:stale"
    assert torch.equal(stale.craft(honest, 2, generator=_gen()), torch.zeros(2, 5, dtype=torch.float64))
    prev = torch.arange(5, dtype=torch.float64)
    assert torch.equal(stale.craft(honest, 2, generator=_gen(), previous=prev), prev.expand(2, -1))
    assert make_attack("freerider", mode="stale").params == stale.params


@pytest.mark.parametrize("name", [n for n in ATTACK_NAMES if n != "labelflip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype(name: str, dtype: torch.dtype) -> None:
    honest = _honest(dtype=dtype)
    out = make_attack(name).craft(honest, 3, generator=_gen())
    assert out.shape == (3, 5) and out.dtype == dtype
    assert make_attack(name).craft(honest, 0, generator=_gen()).shape == (0, 5)
    # craft does not modify the honest updates
    assert torch.equal(honest, _honest(dtype=dtype))

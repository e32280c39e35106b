"""Byzantine attacks as pure functions of the honest updates, for the simulator.

Contract: ``make_attack(name, **params)`` returns an :class:`Attack`;
``attack.craft(honest, n_byzantine, generator=..., own=..., previous=...)``
returns an ``(n_byzantine, d)`` tensor in ``honest``'s dtype. Attacks see every
honest update of the round (``honest``, shape ``(h, d)``), as the literature
assumes (omniscient Byzantine peers). Nothing here touches sockets, clocks or
global RNG state: randomness comes only from the ``generator`` argument.

``own`` is the attacker's own honestly computed update (``(d,)`` or
``(n_byzantine, d)``); ``previous`` is what it sent (or what was aggregated)
in the previous round, same shapes. Both are optional except where noted.

Attacks (``ATTACK_NAMES``):

* ``signflip``: ``-scale * own`` if ``own`` is given, else ``-scale * mean(honest)``.
* ``ipm`` (Xie, Koyejo, Gupta 2020, "Fall of empires: breaking
  Byzantine-tolerant SGD by inner product manipulation"): every Byzantine row
  is ``-epsilon * mean(honest)``, making the inner product of the aggregate
  with the true gradient negative. Default ``epsilon = 0.1``: the paper shows
  that a small epsilon defeats median and Krum (the Byzantine vectors sit
  inside the honest cloud) while a large one breaks averaging; 0.1 is also
  what follow-up benchmarks commonly use.
* ``alie`` (Baruch, Baruch, Goldberg 2019, "A little is enough: circumventing
  defenses for distributed learning"): every Byzantine row is
  ``mean - z_max * std`` per coordinate, over the honest rows, with
  ``s = floor(n/2 + 1) - f`` and ``z_max = Phi^{-1}((n - s) / n)``
  (``n = h + n_byzantine`` peers, ``f = n_byzantine``, ``Phi`` the standard
  normal CDF, via ``statistics.NormalDist``). ``std`` is the sample standard
  deviation (``correction = 1``; 0 when ``h = 1``). Override with ``z=...``.
* ``gaussian``: i.i.d. ``N(0, sigma^2)`` entries (default ``sigma = 1``), or
  centred on ``mean(honest)`` with ``around_mean=True``.
* ``labelflip``: data poisoning, not an update attack
  (``Attack.data_poisoning is True``): the simulator trains the Byzantine
  peers on labels mapped by :func:`flip_labels` (``y -> C - 1 - y``) and they
  send the resulting update, passed in as ``own``; ``craft`` returns it.
* ``mimic`` (Karimireddy, He, Jaggi 2022, "Byzantine-robust learning on
  heterogeneous datasets via bucketing"): every Byzantine peer copies one
  honest peer's update, over-weighting that peer's data distribution without
  looking abnormal. The paper chooses the target once, as the honest worker
  with the largest projection on the direction of maximum variance, and keeps
  it. Here ``target`` is a fixed honest index (default 0, stable across
  rounds, the simulator can pass a chosen one) or ``"maxvar"``: per call,
  ``argmax_i |<x_i - mean, u>|`` with ``u`` the top right singular vector of
  the centred honest matrix (ties to the lower index).
* ``freerider``: sends zeros; ``freerider:stale`` (or ``mode="stale"``)
  replays ``previous`` (zeros when there is none yet).

Unknown names or parameters raise :class:`~gossamer.errors.ConfigError` listing
what is accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from collections.abc import Callable
from typing import Any

import torch

from gossamer.errors import ConfigError

__all__ = ["ATTACK_NAMES", "Attack", "alie_z", "flip_labels", "make_attack"]

ATTACK_NAMES: tuple[str, ...] = (
    "signflip",
    "ipm",
    "alie",
    "gaussian",
    "labelflip",
    "mimic",
    "freerider",
)

_ACCEPTED = (
    "signflip[scale], ipm[epsilon=0.1], alie[z], gaussian[sigma=1, around_mean], "
    "labelflip, mimic[target=0|'maxvar'], freerider | freerider:stale"
)


def flip_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label flipping: ``y -> num_classes - 1 - y`` (pure, same dtype and shape)."""
    if num_classes < 1:
        raise ConfigError(f"flip_labels needs num_classes >= 1, got {num_classes}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(
            f"flip_labels: labels must lie in [0, {num_classes}), got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return (num_classes - 1) - labels


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s ``z_max``: ``s = floor(n/2 + 1) - f``, ``Phi^{-1}((n - s)/n)``."""
    if n < 1 or f < 0 or f > n:
        raise ConfigError(f"alie needs 0 <= f <= n and n >= 1, got n={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0.0 < p < 1.0:
        raise ConfigError(
            f"alie: (n - s)/n = {p:.3g} is outside (0, 1) for n={n}, f={f}; pass z= explicitly"
        )
    return NormalDist().inv_cdf(p)


def _rows(t: torch.Tensor, n_byzantine: int, d: int, what: str) -> torch.Tensor:
    """Broadcast a (d,) or (n_byzantine, d) tensor to (n_byzantine, d)."""
    if t.dim() == 1 and t.shape[0] == d:
        return t.expand(n_byzantine, d).clone()
    if t.dim() == 2 and tuple(t.shape) == (n_byzantine, d):
        return t.clone()
    raise ConfigError(f"{what} must have shape ({d},) or ({n_byzantine}, {d}), got {tuple(t.shape)}")


Crafter = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Attack:
    """A named attack with its parameters; :meth:`craft` makes the Byzantine rows."""

    name: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    data_poisoning: bool = False

    def craft(
        self,
        honest: torch.Tensor,
        n_byzantine: int,
        *,
        generator: torch.Generator,
        own: torch.Tensor | None = None,
        previous: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the ``(n_byzantine, d)`` Byzantine updates for this round."""
        if not isinstance(honest, torch.Tensor) or honest.dim() != 2 or honest.shape[0] < 1:
            shape = tuple(honest.shape) if isinstance(honest, torch.Tensor) else type(honest).__name__
            raise ConfigError(f"attack {self.name}: honest must be (h >= 1, d), got {shape}")
        if isinstance(n_byzantine, bool) or not isinstance(n_byzantine, int) or n_byzantine < 0:
            raise ConfigError(f"attack {self.name}: n_byzantine must be an int >= 0, got {n_byzantine!r}")
        d = honest.shape[1]
        if n_byzantine == 0:
            return honest.new_zeros((0, d))
        out = _CRAFTERS[self.name.partition(":")[0]](
            self, honest, n_byzantine, generator=generator, own=own, previous=previous
        )
        return out.to(honest.dtype)


def _signflip(a: Attack, honest: torch.Tensor, nb: int, *, own: torch.Tensor | None, **_: Any) -> torch.Tensor:
    scale = a.params["scale"]
    d = honest.shape[1]
    base = _rows(own, nb, d, "own") if own is not None else honest.mean(dim=0).expand(nb, d)
    return -scale * base


def _ipm(a: Attack, honest: torch.Tensor, nb: int, **_: Any) -> torch.Tensor:
    return (-a.params["epsilon"] * honest.mean(dim=0)).expand(nb, honest.shape[1]).clone()


def _alie(a: Attack, honest: torch.Tensor, nb: int, **_: Any) -> torch.Tensor:
    h = honest.shape[0]
    z = a.params.get("z")
    if z is None:
        z = alie_z(h + nb, nb)
    std = honest.std(dim=0, correction=1) if h > 1 else torch.zeros_like(honest[0])
    return (honest.mean(dim=0) - z * std).expand(nb, honest.shape[1]).clone()


def _gaussian(a: Attack, honest: torch.Tensor, nb: int, *, generator: torch.Generator, **_: Any) -> torch.Tensor:
    d = honest.shape[1]
    noise = torch.randn((nb, d), generator=generator, dtype=torch.float64) * a.params["sigma"]
    noise = noise.to(device=honest.device)
    if a.params["around_mean"]:
        noise = noise + honest.mean(dim=0).to(torch.float64)
    return noise


def _labelflip(a: Attack, honest: torch.Tensor, nb: int, *, own: torch.Tensor | None, **_: Any) -> torch.Tensor:
    if own is None:
        raise ConfigError(
            "labelflip is data poisoning: train the Byzantine peers on flip_labels(...) "
            "and pass their update as own="
        )
    return _rows(own, nb, honest.shape[1], "own")


def mimic_target(honest: torch.Tensor, target: int | str) -> int:
    """Index of the honest row that ``mimic`` copies (see the module docstring)."""
    h = honest.shape[0]
    if target != "maxvar":
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < h:
            raise ConfigError(f"mimic target {target} is outside the {h} honest rows")
        return target
    centred = honest.to(torch.float64) - honest.to(torch.float64).mean(dim=0)
    if h == 1 or float(centred.abs().max()) == 0.0:
        return 0
    u = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    proj = (centred @ u).abs()
    return int(torch.nonzero(proj == proj.max()).flatten()[0])


def _mimic(a: Attack, honest: torch.Tensor, nb: int, **_: Any) -> torch.Tensor:
    i = mimic_target(honest, a.params["target"])
    return honest[i].expand(nb, honest.shape[1]).clone()


def _freerider(a: Attack, honest: torch.Tensor, nb: int, *, previous: torch.Tensor | None, **_: Any) -> torch.Tensor:
    d = honest.shape[1]
    if a.params["mode"] == "stale" and previous is not None:
        return _rows(previous, nb, d, "previous")
    return honest.new_zeros((nb, d))


_CRAFTERS: dict[str, Crafter] = {
    "signflip": _signflip,
    "ipm": _ipm,
    "alie": _alie,
    "gaussian": _gaussian,
    "labelflip": _labelflip,
    "mimic": _mimic,
    "freerider": _freerider,
}

_DEFAULTS: dict[str, dict[str, Any]] = {
    "signflip": {"scale": 1.0},
    "ipm": {"epsilon": 0.1},
    "alie": {"z": None},
    "gaussian": {"sigma": 1.0, "around_mean": False},
    "labelflip": {},
    "mimic": {"target": 0},
    "freerider": {"mode": "zeros"},
}


def _number(name: str, key: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"attack {name}: {key} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"attack {name}: {key} must be > 0, got {value!r}")
    return float(value)


def make_attack(name: str, **params: Any) -> Attack:
    """Build the attack ``name`` (optionally ``"freerider:stale"``) with ``params``."""
    if not isinstance(name, str):
        raise ConfigError(f"attack name must be a string, got {name!r}; accepted: {_ACCEPTED}")
    base, _, variant = name.partition(":")
    if base not in _DEFAULTS:
        raise ConfigError(f"unknown attack {name!r}; accepted: {_ACCEPTED}")
    if variant:
        if base != "freerider" or variant not in ("stale", "zeros"):
            raise ConfigError(f"unknown attack variant {name!r}; accepted: {_ACCEPTED}")
        params = {**params, "mode": variant}
    unknown = set(params) - set(_DEFAULTS[base])
    if unknown:
        raise ConfigError(
            f"attack {base} takes {sorted(_DEFAULTS[base]) or 'no parameters'}, got {sorted(unknown)}"
        )
    p = {**_DEFAULTS[base], **params}
    if base == "signflip":
        p["scale"] = _number(base, "scale", p["scale"])
    elif base == "ipm":
        p["epsilon"] = _number(base, "epsilon", p["epsilon"])
    elif base == "alie" and p["z"] is not None:
        p["z"] = _number(base, "z", p["z"])
    elif base == "gaussian":
        p["sigma"] = _number(base, "sigma", p["sigma"], positive=True)
        p["around_mean"] = bool(p["around_mean"])
    elif base == "mimic":
        t = p["target"]
        if t != "maxvar" and (isinstance(t, bool) or not isinstance(t, int) or t < 0):
            raise ConfigError(f"attack mimic: target must be an int >= 0 or 'maxvar', got {t!r}")
    elif base == "freerider" and p["mode"] not in ("zeros", "stale"):
        raise ConfigError(f"attack freerider: mode must be 'zeros' or 'stale', got {p['mode']!r}")
    canonical = "freerider:stale" if base == "freerider" and p["mode"] == "stale" else base
    return Attack(name=canonical, params=p, data_poisoning=(base == "labelflip"))

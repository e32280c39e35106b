"""Contribution scores: per-peer evidence from chunk-wise partial sums, a judge,
a sampled loss check and the combination of several reporters' verdicts.

Where the numbers come from
---------------------------
The collective is a butterfly all-reduce: the vector is split into chunks and
the owner of a chunk sees every contributor's slice of it (``rows``, ``(n, c)``)
and the aggregate of that chunk (``agg``, ``(c,)``). Every score below is a
function of sums over coordinates, so each owner computes

    partial_sums(rows, agg, hist_rows, hist_agg) -> float64 vector of length L

and the sum of these vectors over all chunks (exchanged like any other
statistic) equals ``partial_sums`` of the whole vectors, up to float64
rounding. ``L = partial_length(n) = 5 n + 2 + n (n - 1) / 2``, laid out as

    [ <x_i, a>     for i < n ]
    [ ||x_i||^2    for i < n ]
    [ ||x_i - a||^2 for i < n ]
    [ <H_i, A>     for i < n ]
    [ ||H_i||^2    for i < n ]
    [ ||a||^2, ||A||^2 ]
    [ ||x_i - x_k||^2 for i < k, row-major upper triangle ]

``H_i`` is the running sum of contributor ``i``'s contributions and ``A`` the
running sum of the aggregates (the long-term "history of gradients" of
MUD-HoG: Gupta et al. 2022, "MUD-HoG: Byzantine-robust federated learning by
mitigating unreliable and malicious clients"); the caller keeps them and
decides whether they include the current round (the tests do). Without
history (``None``) those terms are 0. A row with a non-finite entry in this
chunk (an all-NaN row marks a dropped contributor) has every one of its terms
0 (its own, its history's and its pairwise distances); the caller reports it in ``dropped`` and its numbers are ignored.
Pairwise distances are computed from explicit differences, so two
bit-identical contributions have a distance of exactly 0.0 on every chunk
and in the sum.

Evidence (:func:`evidence_from_sums`), per peer, with ``a`` the aggregate:

    cosine        <x_i, a> / (||x_i|| ||a||)             (0 when a norm is 0)
    norm_ratio    ||x_i|| / ||a||                        (inf if ||a|| = 0 < ||x_i||; 1 if both 0)
    dist_ratio    ||x_i - a|| / median_k ||x_k - a||     (k over non-dropped peers)
    krum          sum of the n' - f - 2 smallest ||x_i - x_k||^2 (k != i, non-dropped),
                  divided by the median Krum score       (Blanchard et al. 2017)
    long_cosine   <H_i, A> / (||H_i|| ||A||)             (0 when a norm is 0)
    zero          ||x_i|| == 0 or ||x_i|| < 1e-12 * median_k ||x_k||
    identical_to  the other peers whose contribution is bit-identical (distance 0.0)
    copied_from   for a peer in such a group that is not its first member in the
                  given peer order (the seniority order, lowest index first),
                  the first member: the later-ranked peer is taken to be the
                  copier; the first member is reported in ``identical_to`` only
    replayed      given by the caller: the contribution's bytes hash equals one
                  of that peer's earlier contributions
    dropped       given by the caller: non-finite or undecodable contribution
    clipped       given by the caller (e.g. the clipping factor a centred-clip
                  aggregator applied); informational, not judged

A ratio whose denominator (a median) is 0 is 0 when its numerator is 0 and
inf otherwise; no field is ever NaN.

Judge (:func:`judge`, :class:`Thresholds`): a peer is bad when it was dropped,
sent a zero update, a copy or a replay, when its norm ratio is outside
``[1/r, r]``, its distance ratio above ``d``, its cosine below ``c_short``,
its Krum ratio above ``krum`` (off by default), or, once the history spans
more than ``w`` rounds, its long-term cosine below ``c_long``. Each reason is
a short string naming the measured value, e.g. ``"cosine -0.93 < -0.1"``.

Defaults and why (``tests/verify/test_scores.py``, d = 2048, float32 rows,
aggregate = coordinate median of all rows, history including the current
round). Honest rows: shared drifting direction + one of three cluster offsets
of the same norm (non-iid; clusters of 5, 3, 2) + a per-peer offset + per-round
noise, each peer with its own step scale. Over 200 rounds of 10 honest peers:
cosine >= 0.62, norm ratio in [1.10, 1.40], distance ratio <= 1.37, long-term
cosine >= 0.66; none flagged. With 3 attackers among 10 (30 rounds; honest
peers then span cosine >= 0.57, norm ratio [0.73, 2.29], distance ratio
<= 1.24, long-term cosine >= 0.59, none flagged):

* sign flip: cosine <= -0.66, long-term cosine <= -0.70: flagged every round;
* Gaussian noise with the honest median norm: cosine in [0.04, 0.16],
  distance ratio <= 1.68 (the per-round scores miss it), long-term cosine in
  [0.02, 0.11]: flagged from the third round (``c_long = 0.2``) on;
* ALIE (mean - z std): z = 5 has distance ratio >= 3.74 and is flagged; z = 4
  (<= 2.94) and z = 1 (0.38) are not: inside the honest spread, such rows
  are left to the robust aggregator, whose damage bound covers them.

Sampled check (:func:`loss_delta_check`): the Gauntlet-style check of
Templar: evaluate a (sampled) contribution on held data, the loss after
``params - lr * update`` minus the loss before; negative means it helps.

Reports (:func:`combine_reports`): a peer is bad iff more than half of the
eligible voters (the established peers, other than itself) report it bad.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gossamer.errors import ConfigError

__all__ = [
    "PeerEvidence",
    "PeerScore",
    "RoundEvidence",
    "Thresholds",
    "combine_reports",
    "evidence_from_sums",
    "judge",
    "loss_delta_check",
    "partial_length",
    "partial_sums",
]


def partial_length(n: int) -> int:
    """Length of the :func:`partial_sums` vector for ``n`` contributors."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"partial_length needs an int n >= 0, got {n!r}")
    return 5 * n + 2 + n * (n - 1) // 2


def _finite_rows(x: torch.Tensor) -> torch.Tensor:
    """float64 copy of ``x`` with every row that has a non-finite entry set to 0."""
    x64 = x.to(torch.float64)
    ok = torch.isfinite(x64).all(dim=1)
    return torch.where(ok[:, None], x64, torch.zeros((), dtype=torch.float64, device=x.device))


def partial_sums(
    rows: torch.Tensor,
    agg: torch.Tensor,
    hist_rows: torch.Tensor | None = None,
    hist_agg: torch.Tensor | None = None,
) -> torch.Tensor:
    """This chunk's float64 partial sums (layout in the module docstring).

    ``rows`` is ``(n, c)``, ``agg`` ``(c,)``; ``hist_rows`` ``(n, c)`` and
    ``hist_agg`` ``(c,)`` are both given or both None. Summing the result over
    any split of the columns gives the result on the whole vectors.
    """
    if not isinstance(rows, torch.Tensor) or rows.dim() != 2:
        raise ConfigError(f"partial_sums: expected rows of shape (n, c), got {_shape(rows)}")
    n, c = rows.shape
    if not isinstance(agg, torch.Tensor) or tuple(agg.shape) != (c,):
        raise ConfigError(f"partial_sums: expected agg of shape ({c},), got {_shape(agg)}")
    if (hist_rows is None) != (hist_agg is None):
        raise ConfigError("partial_sums: give both hist_rows and hist_agg, or neither")
    ok = torch.isfinite(rows).all(dim=1).to(torch.float64)  # 0 for a dropped row
    x = _finite_rows(rows)
    a = agg.to(torch.float64)
    a = torch.where(torch.isfinite(a), a, torch.zeros((), dtype=torch.float64, device=a.device))
    out = torch.zeros(partial_length(n), dtype=torch.float64, device=rows.device)
    out[0:n] = x @ a
    out[n : 2 * n] = x.square().sum(dim=1)
    out[2 * n : 3 * n] = (x - a).square().sum(dim=1) * ok
    if hist_rows is not None and hist_agg is not None:
        if tuple(hist_rows.shape) != (n, c) or tuple(hist_agg.shape) != (c,):
            raise ConfigError(
                f"partial_sums: expected hist_rows ({n}, {c}) and hist_agg ({c},), "
                f"got {_shape(hist_rows)} and {_shape(hist_agg)}"
            )
        h = _finite_rows(hist_rows) * ok[:, None]
        big_a = _finite_rows(hist_agg.reshape(1, c))[0]
        out[3 * n : 4 * n] = h @ big_a
        out[4 * n : 5 * n] = h.square().sum(dim=1)
        out[5 * n + 1] = big_a.square().sum()
    out[5 * n] = a.square().sum()
    pos = 5 * n + 2
    for i in range(n - 1):
        m = n - 1 - i
        out[pos : pos + m] = (x[i + 1 :] - x[i]).square().sum(dim=1) * ok[i + 1 :] * ok[i]
        pos += m
    return out


def _shape(t: Any) -> Any:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


@dataclass(frozen=True)
class PeerEvidence:
    """What the scores measured for one peer in one round (fields: module docstring)."""

    peer: str
    cosine: float
    norm_ratio: float
    dist_ratio: float
    krum: float
    long_cosine: float
    history_rounds: int
    zero: bool
    identical_to: tuple[str, ...]
    copied_from: str | None
    replayed: bool
    dropped: bool
    clipped: float | None


@dataclass(frozen=True)
class PeerScore(PeerEvidence):
    """:class:`PeerEvidence` plus the verdict of :func:`judge`."""

    bad: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RoundEvidence:
    """Per-peer evidence of one round, in the given peer (seniority) order."""

    peers: tuple[str, ...]
    f: int
    per_peer: dict[str, PeerEvidence]
    copies: tuple[tuple[str, str], ...]  # (first member, copier) pairs

    def __getitem__(self, peer: str) -> PeerEvidence:
        return self.per_peer[peer]


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf


def _cos(dot: float, sq1: float, sq2: float) -> float:
    den = math.sqrt(sq1) * math.sqrt(sq2)
    if not den > 0:
        return 0.0
    return max(-1.0, min(1.0, dot / den))


def _median(values: Sequence[float]) -> float:
    """Median of a non-empty list (mean of the middle pair for even length)."""
    s = sorted(values)
    m = len(s)
    return s[m // 2] if m % 2 else (s[m // 2 - 1] + s[m // 2]) / 2


def evidence_from_sums(
    peers: Sequence[str],
    total: torch.Tensor,
    *,
    f: int,
    dropped: Sequence[str] = (),
    replayed: Sequence[str] = (),
    clipped: Mapping[str, float] | None = None,
    history_rounds: int | Mapping[str, int] = 0,
) -> RoundEvidence:
    """Turn the chunk-summed :func:`partial_sums` into per-peer evidence.

    ``peers[i]`` names row ``i``, in seniority order (it decides which member
    of an identical pair is the copier). ``f`` is the number of Byzantine
    peers tolerated (Krum uses the ``n' - f - 2`` nearest others, at least 1).
    ``history_rounds`` is how many rounds ``H_i`` spans (one number for all,
    or per peer); the judge ignores the long-term cosine until it exceeds the
    warm-up.
    """
    names = tuple(str(p) for p in peers)
    n = len(names)
    if len(set(names)) != n:
        raise ConfigError(f"evidence_from_sums: duplicate peer names in {list(names)}")
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ConfigError(f"evidence_from_sums: f must be an int >= 0, got {f!r}")
    if not isinstance(total, torch.Tensor) or tuple(total.shape) != (partial_length(n),):
        raise ConfigError(
            f"evidence_from_sums: expected a summed vector of length {partial_length(n)} "
            f"for {n} peers, got {_shape(total)}"
        )
    unknown = (set(dropped) | set(replayed) | set(clipped or {})) - set(names)
    if unknown:
        raise ConfigError(f"evidence_from_sums: unknown peers {sorted(unknown)}; peers are {list(names)}")
    t = [float(v) for v in total.to(torch.float64).cpu().tolist()]
    xa, xx, xd = t[0:n], t[n : 2 * n], t[2 * n : 3 * n]
    ha, hh = t[3 * n : 4 * n], t[4 * n : 5 * n]
    aa, big_aa = t[5 * n], t[5 * n + 1]
    dist: list[list[float]] = [[0.0] * n for _ in range(n)]
    pos = 5 * n + 2
    for i in range(n):
        for k in range(i + 1, n):
            dist[i][k] = dist[k][i] = t[pos]
            pos += 1

    gone = set(dropped)
    live = [i for i in range(n) if names[i] not in gone]
    med_norm = _median([math.sqrt(max(xx[i], 0.0)) for i in live]) if live else 0.0
    med_dist = _median([math.sqrt(max(xd[i], 0.0)) for i in live]) if live else 0.0
    m = max(1, len(live) - f - 2)
    krum_raw: dict[int, float] = {}
    for i in live:
        others = sorted(dist[i][k] for k in live if k != i)
        krum_raw[i] = sum(others[:m])
    med_krum = _median(list(krum_raw.values())) if krum_raw else 0.0

    identical: dict[int, list[int]] = {i: [] for i in range(n)}
    for i in live:
        for k in live:
            if k != i and dist[i][k] == 0.0:
                identical[i].append(k)
    copies = tuple(
        (names[identical[i][0]], names[i]) for i in live if identical[i] and identical[i][0] < i
    )
    copied_from = {copier: first for first, copier in copies}

    def rounds_of(name: str) -> int:
        if isinstance(history_rounds, Mapping):
            return int(history_rounds.get(name, 0))
        return int(history_rounds)

    per_peer: dict[str, PeerEvidence] = {}
    for i, name in enumerate(names):
        is_dropped = name in gone
        norm = math.sqrt(max(xx[i], 0.0))
        per_peer[name] = PeerEvidence(
            peer=name,
            cosine=0.0 if is_dropped else _cos(xa[i], xx[i], aa),
            norm_ratio=0.0 if is_dropped else (1.0 if norm == aa == 0.0 else _ratio(norm, math.sqrt(max(aa, 0.0)))),
            dist_ratio=0.0 if is_dropped else _ratio(math.sqrt(max(xd[i], 0.0)), med_dist),
            krum=0.0 if is_dropped else _ratio(krum_raw.get(i, 0.0), med_krum),
            long_cosine=0.0 if is_dropped else _cos(ha[i], hh[i], big_aa),
            history_rounds=rounds_of(name),
            zero=(not is_dropped) and (norm == 0.0 or norm < 1e-12 * med_norm),
            identical_to=tuple(names[k] for k in identical[i]),
            copied_from=copied_from.get(name),
            replayed=name in set(replayed),
            dropped=is_dropped,
            clipped=None if clipped is None or name not in clipped else float(clipped[name]),
        )
    return RoundEvidence(peers=names, f=f, per_peer=per_peer, copies=copies)


@dataclass(frozen=True)
class Thresholds:
    """Limits used by :func:`judge` (defaults measured in tests/verify/test_scores.py).

    * ``norm_ratio = 10``: bad when ``||x_i|| / ||a||`` is outside ``[1/10, 10]``
      (honest non-iid peers stayed within [0.73, 2.29]).
    * ``dist_ratio = 3``: bad when ``||x_i - a||`` exceeds 3 times the median
      distance (honest: <= 1.37; ALIE with z = 5: >= 3.74, z = 4: 2.94).
    * ``c_short = -0.1``: bad when this round's cosine to the aggregate is below
      it (honest: >= 0.57; sign flip: <= -0.66). Slightly negative so that a
      noisy honest round near orthogonal to the aggregate is not flagged.
    * ``c_long = 0.2`` after ``warmup = 2`` rounds: bad when the long-term
      cosine ``<H_i, A> / (||H_i|| ||A||)`` is below it once the history spans
      more than 2 rounds (honest non-iid: >= 0.59; Gaussian noise with the
      honest norm: <= 0.11; sign flip: <= -0.70). Raised from 0.0: noise sits
      near 0, slightly positive because it pulls the aggregate towards itself,
      and a threshold of 0 would miss it most rounds.
    * ``krum = inf``: bad when the Krum score exceeds this multiple of the
      median Krum score; off by default (informational).
    """

    norm_ratio: float = 10.0
    dist_ratio: float = 3.0
    c_short: float = -0.1
    c_long: float = 0.2
    warmup: int = 2
    krum: float = math.inf

    def __post_init__(self) -> None:
        if not self.norm_ratio >= 1.0:
            raise ConfigError(f"Thresholds.norm_ratio must be >= 1, got {self.norm_ratio!r}")
        if not self.dist_ratio > 0:
            raise ConfigError(f"Thresholds.dist_ratio must be > 0, got {self.dist_ratio!r}")
        if not (-1.0 <= self.c_short <= 1.0 and -1.0 <= self.c_long <= 1.0):
            raise ConfigError(
                f"Thresholds: cosines must lie in [-1, 1], got c_short={self.c_short!r}, "
                f"c_long={self.c_long!r}"
            )
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError(f"Thresholds.warmup must be an int >= 0, got {self.warmup!r}")
        if not self.krum > 0:
            raise ConfigError(f"Thresholds.krum must be > 0, got {self.krum!r}")


def _g(v: float) -> str:
    return f"{v:.3g}"


def judge(evidence: RoundEvidence, thresholds: Thresholds = Thresholds()) -> dict[str, PeerScore]:
    """Decide which peers are bad this round and why (rules: module docstring)."""
    th = thresholds
    out: dict[str, PeerScore] = {}
    for name in evidence.peers:
        e = evidence.per_peer[name]
        reasons: list[str] = []
        if e.dropped:
            reasons.append("dropped (non-finite or undecodable)")
        else:
            if e.zero:
                reasons.append("zero update")
            if e.copied_from is not None:
                reasons.append(f"copy of {e.copied_from}")
            if e.replayed:
                reasons.append("replayed an earlier contribution")
            if e.norm_ratio > th.norm_ratio:
                reasons.append(f"norm ratio {_g(e.norm_ratio)} > {_g(th.norm_ratio)}")
            elif e.norm_ratio < 1.0 / th.norm_ratio and not e.zero:
                reasons.append(f"norm ratio {_g(e.norm_ratio)} < {_g(1.0 / th.norm_ratio)}")
            if e.dist_ratio > th.dist_ratio:
                reasons.append(f"distance ratio {_g(e.dist_ratio)} > {_g(th.dist_ratio)}")
            if e.krum > th.krum:
                reasons.append(f"krum ratio {_g(e.krum)} > {_g(th.krum)}")
            if e.cosine < th.c_short and not e.zero:
                reasons.append(f"cosine {e.cosine:.2f} < {_g(th.c_short)}")
            if e.history_rounds > th.warmup and e.long_cosine < th.c_long and not e.zero:
                reasons.append(f"long-term cosine {e.long_cosine:.2f} < {_g(th.c_long)}")
        out[name] = PeerScore(**vars(e), bad=bool(reasons), reasons=tuple(reasons))
    return out


def loss_delta_check(
    model_fn: Callable[[torch.Tensor, Any], torch.Tensor],
    params: torch.Tensor,
    update: torch.Tensor,
    batch: tuple[Any, Any],
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
    *,
    lr: float,
) -> float:
    """Loss on held data after applying ``update`` minus the loss before.

    The sampled-contribution check (Gauntlet-style, as in Templar): a
    validator evaluates one sampled contribution on data the contributor did
    not choose. ``update`` is in gradient convention (the pseudo-gradient
    peers send, ``theta_start - theta_local``), so applying it means
    ``params - lr * update``. ``model_fn(params, inputs)`` returns outputs,
    ``loss_fn(outputs, targets)`` a scalar, ``batch = (inputs, targets)``.
    Negative: the update helps; positive: it hurts. Runs without autograd.
    """
    if tuple(params.shape) != tuple(update.shape):
        raise ConfigError(
            f"loss_delta_check: update shape {tuple(update.shape)} != params shape {tuple(params.shape)}"
        )
    if not math.isfinite(lr):
        raise ConfigError(f"loss_delta_check: lr must be finite, got {lr!r}")
    inputs, targets = batch
    with torch.no_grad():
        before = float(loss_fn(model_fn(params, inputs), targets))
        after = float(loss_fn(model_fn(params - lr * update.to(params.dtype), inputs), targets))
    return after - before


def combine_reports(
    reports: Mapping[str, Mapping[str, bool]], *, voters: Sequence[str]
) -> dict[str, bool]:
    """Majority of eligible voters: who is bad, from several reporters' verdicts.

    ``reports[reporter][peer]`` is True when ``reporter`` found ``peer`` bad.
    Only reporters in ``voters`` (the established peers) count; for each peer
    the eligible voters are ``voters`` minus the peer itself, a reporter's
    claim about itself is ignored, and a missing report counts as "not bad".
    A peer is bad iff strictly more than half of its eligible voters say so,
    so a minority of liars can neither frame an honest peer nor shield a bad
    one. Returns a verdict for every peer named by any report or in ``voters``.
    """
    voter_set = set(voters)
    peers: set[str] = set(voter_set)
    for verdicts in reports.values():
        peers.update(verdicts)
    out: dict[str, bool] = {}
    for peer in sorted(peers):
        eligible = voter_set - {peer}
        yes = sum(1 for v in eligible if bool(reports.get(v, {}).get(peer, False)))
        out[peer] = 2 * yes > len(eligible)
    return out

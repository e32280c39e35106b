"""State hashes and parity checks; contribution scores and reputation."""

from .hashing import combined_hash, state_hash
from .reputation import PROOF_PREFIX, Exclusion, Reputation
from .scores import (
    PeerEvidence,
    PeerScore,
    RoundEvidence,
    Thresholds,
    combine_reports,
    evidence_from_sums,
    judge,
    loss_delta_check,
    partial_length,
    partial_sums,
)

__all__ = [
    "PROOF_PREFIX",
    "Exclusion",
    "PeerEvidence",
    "PeerScore",
    "Reputation",
    "RoundEvidence",
    "Thresholds",
    "combine_reports",
    "combined_hash",
    "evidence_from_sums",
    "judge",
    "loss_delta_check",
    "partial_length",
    "partial_sums",
    "state_hash",
]

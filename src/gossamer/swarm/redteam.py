"""Byzantine swarm peers, for red-teaming (``gossamer peer --attack NAME``).

A test feature: an attacking peer runs the real protocol and deviates in one
role. Three kinds (``ATTACKS`` maps each name to its kind):

- *contributor* (``sim/attacks.py``: signflip, ipm, alie, gaussian, labelflip,
  mimic, freerider, freerider:stale): the peer computes its honest update and
  sends a crafted one. Real attackers see no honest peer's update; colluding
  attackers pool their own (``--collude DIR:F``: F attackers share a folder,
  each writes its honest update for the operation and waits for the others),
  and craft with ``sim.adversary.craft_colluding``, exactly as the
  simulator's colluding adversary does for the same seed. Without
  ``--collude`` an attacker works alone (F = 1). ``labelflip`` trains on
  flipped labels instead (data poisoning: the shard is built that way).
- *owner* (``comm/byzantine.py``: tamper, equivocate, withhold, statlie,
  falseaccuse): deviations inside the audited all-reduce.
- *swarm*: ``hashlie`` reports a wrong state hash to the coordinator;
  ``scorelie`` reports every other peer as bad and itself as fine.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..comm.byzantine import ATTACKS as OWNER_ATTACKS
from ..comm.byzantine import make_behaviour
from ..errors import ConfigError
from ..sim.adversary import craft_colluding
from ..sim.attacks import ATTACK_NAMES, Attack, make_attack

SWARM_ATTACKS = ("hashlie", "scorelie")
ATTACKS: dict[str, str] = {
    **{name: "contributor" for name in (*ATTACK_NAMES, "freerider:stale")},
    **{name: "owner" for name in OWNER_ATTACKS},
    **{name: "swarm" for name in SWARM_ATTACKS},
}


def attack_kind(name: str) -> str:
    """``contributor``, ``owner`` or ``swarm``; ConfigError lists every known attack."""
    try:
        return ATTACKS[name]
    except KeyError:
        raise ConfigError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}") from None


def parse_collude(text: str) -> tuple[Path, int]:
    """``DIR:F`` -> (folder, number of colluders)."""
    folder, sep, count = text.rpartition(":")
    if not sep or not folder or not count.isdigit() or int(count) < 1:
        raise ConfigError(f"--collude wants DIR:F (a shared folder and the number of colluders >= 1), got {text!r}")
    return Path(folder), int(count)


class FileCollusion:
    """Contribution hook of a colluding contributor over real processes (see the module docstring).

    Colluders are ordered by peer id; each writes ``<round>-<op>-<name>/<peer>.pt`` (atomically)
    and waits up to ``timeout`` s for the other ``count - 1``; missing colluders are left out.
    """

    def __init__(self, attack: Attack, folder: Path, count: int, peer_id: str, comm: Any, *, seed: int,
                 timeout: float = 20.0) -> None:
        self.attack = attack
        self.folder = folder
        self.count = count
        self.peer_id = peer_id
        self.comm = comm
        self.seed = seed
        self.timeout = timeout
        self.previous: torch.Tensor | None = None
        self.known: set[str] = set()
        folder.mkdir(parents=True, exist_ok=True)

    async def __call__(self, name: str, op: int, flat: torch.Tensor) -> torch.Tensor:
        round_ = int(self.comm.round)
        slot = self.folder / f"{round_}-{op}-{name}"
        slot.mkdir(parents=True, exist_ok=True)
        tmp = slot / f".{self.peer_id}.{os.getpid()}.tmp"
        torch.save(flat.detach().clone(), tmp)
        os.replace(tmp, slot / f"{self.peer_id}.pt")
        deadline = time.monotonic() + self.timeout
        while True:
            files = sorted(p for p in slot.glob("*.pt"))
            self.known.update(p.stem for p in files)
            # colluders seen before and no longer in the group were excluded: do not wait for them
            need = self.count if len(self.known) < self.count else len([p for p in self.known if p in self.comm.group])
            if len(files) >= need or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.005)
        ids = [p.stem for p in files]
        rows = [torch.load(p, weights_only=True) for p in files]
        mine = craft_colluding(self.attack, torch.stack(rows), ids.index(self.peer_id), group_size=self.comm.size,
                               seed=self.seed, round_=round_, op=op, previous=self.previous)
        self.previous = mine
        return mine


def install(attack: str, comm: Any, peer_id: str, *, seed: int, collude: str | None) -> None:
    """Arm ``comm`` (a Communicator) with ``attack``; swarm-level lies are the peer's to tell."""
    kind = attack_kind(attack)
    if kind == "owner":
        comm.behaviour = make_behaviour(attack)
    elif kind == "contributor" and attack != "labelflip":
        folder, count = parse_collude(collude) if collude else (Path(os.environ.get("TMPDIR", "/tmp")) /
                                                                f"gossamer-alone-{peer_id}", 1)
        comm.contribution_hook = FileCollusion(make_attack(attack), folder, count, peer_id, comm, seed=seed)

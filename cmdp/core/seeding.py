"""Seeding torch's global generator for one run without disturbing the caller's stream."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


@contextlib.contextmanager
def seeded_torch(seed: int) -> Iterator[None]:
    """Seed torch's global generator (a policy's sampled actions draw from it) for the block and
    restore its state afterwards, so that the block depends on ``seed`` alone and the caller's
    own random stream goes on as if the block had not run. A no-op when torch was never
    imported (experts and the random policy need none)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)

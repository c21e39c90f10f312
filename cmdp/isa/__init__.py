"""The Integrated Safety Approach (ISA): model, elicit, constrain, assure.

Imitation pretraining (:mod:`cmdp.isa.imitation`) gives the unsafe starting policy that the
pipeline aligns.
"""

from typing import Any

__all__ = ["BCConfig", "Demos", "demo_statistics", "evaluate_policy", "generate_demos", "load_demos", "train_bc", "training_episodes"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that ``python -m cmdp.isa.imitation`` does not find the module
    # already imported by its own package (runpy warns about that, and it would run twice).
    if name in __all__:
        from cmdp.isa import imitation

        return getattr(imitation, name)
    raise AttributeError(f"module 'cmdp.isa' has no attribute {name!r}")

"""The Integrated Safety Approach (ISA): model, elicit, constrain, assure.

Imitation pretraining (:mod:`cmdp.isa.imitation`) gives the unsafe starting policy that the
pipeline aligns.
"""

from cmdp.isa.imitation import (
    BCConfig,
    Demos,
    demo_statistics,
    evaluate_policy,
    generate_demos,
    load_demos,
    train_bc,
    training_episodes,
)

__all__ = ["BCConfig", "Demos", "demo_statistics", "evaluate_policy", "generate_demos", "load_demos", "train_bc", "training_episodes"]

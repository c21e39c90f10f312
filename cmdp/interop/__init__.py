"""Bridges from cmdp to other safe-RL libraries.

Each bridge lives in its own module and imports its library when that module is imported, never
before: ``import cmdp`` and ``import cmdp.interop`` import none of them.

``cmdp.interop.omnisafe``
    every cmdp env id as an OmniSafe environment named ``"cmdp:<id>"``, so OmniSafe's solvers
    train on cmdp's built-in CMDPs, Safety-CHORES and any gymnasium id cmdp can make.
"""

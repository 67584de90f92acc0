"""The Maestro loop, split by phase: ``context`` (per-run state, journaled model calls),
``plan`` (typed plans), ``execute`` (concurrent tool steps), ``refine`` (draft → validate →
fix) and ``chat`` (a plain tool-calling loop without planning). ``maestro.agent`` composes them.
"""

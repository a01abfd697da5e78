"""The event engine (SimPy) and the numerics that run inside its compute events."""

from .engine import Engine, OpTiming, SimResult

__all__ = ["Engine", "OpTiming", "SimResult"]

"""wse-sim: a discrete-event simulator of wafer-scale AI hardware running transformer workloads."""

__version__ = "0.1.0"

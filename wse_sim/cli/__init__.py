"""The command line, thin: each subcommand module declares its parser and a ``func`` that builds the app's
inputs, calls one use case in :mod:`wse_sim.app`, prints and writes. ``main`` turns user errors into one line
and exit code 2."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from ..gc_pause import gc_paused

# The command's imports (numpy, networkx, the floors) make about 170k objects that live until the process ends and
# no garbage: the cyclic collector, run 239 times meanwhile, traversed them for 70-160 ms of a
# 13B timing-only run's ~1 s (measured with gc.callbacks on a loaded machine).
with gc_paused():
    from ..app import ReferenceImportError, one_run_process
    from ..errors import UserError
    from ..report.provenance import version_line
    from . import calibrate, catalog, mapping, outputs, run, serving, train, viz

SUBCOMMANDS = (run, train, catalog, mapping, serving, viz, calibrate)  # each has add_parsers(sub), in help order


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wse-sim", description="Simulate transformer workloads on a wafer-scale engine.")
    p.add_argument("--version", action="version", version=version_line())
    sub = p.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parsers(sub)
    return p


def _terminate(_signum, _frame) -> None:
    """SIGTERM: unwind like Ctrl-C, so staged outputs are discarded and the run exits 130."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand: exit 0, 2 on a user error, 130 when interrupted, 141 when stdout's reader went away.

    Called without ``argv`` (the ``wse-sim`` command), the process ends here once the outputs are flushed and
    written: the interpreter's teardown would free the run's millions of objects one by one (about 2 s after a
    13B run) for nothing, and what the run's collector pauses made is frozen when they end (see
    :mod:`wse_sim.gc_pause`). Called with ``argv`` (tests, scripts), it returns the exit code."""
    if argv is None:
        one_run_process()
        outputs.draw_in_child = True
    code = _main(argv)
    if argv is None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nothing more to say
                pass
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()  # only there may handlers be set
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        if getattr(args, "config", None):
            args = run.with_config(sys.argv[1:] if argv is None else argv, args.config)
        args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except (UserError, ReferenceImportError) as exc:  # config, checkpoint, SRAM and input errors derive from UserError
        print(f"wse-sim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wse-sim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())

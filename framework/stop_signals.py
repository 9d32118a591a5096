"""Stopping a run cleanly on the signals that cluster schedulers send ahead of a kill.

SLURM, Kubernetes and preemptible clouds send SIGTERM (SLURM's ``--signal`` often SIGUSR1) some
seconds before SIGKILL. On any of ``trainer.stop_signals`` (default SIGTERM, SIGUSR1, SIGINT) a
run finishes the step it is in, writes a checkpoint, records why it stopped in run_info.json and
exits with code 75 (``EXIT_STOPPED``: "resume me"). A second SIGINT (Ctrl+C twice) interrupts at
once; the last checkpoint written stays intact.

    with StopSignals(["SIGTERM", "SIGUSR1", "SIGINT"]) as stop:   # for the whole run
        ... build ...
        trainer = Trainer(callbacks=[keeper, ..., GracefulStop(stop, keeper)])
        trainer.fit(...)
        if stop.requested: raise stop.stopped(...)
"""

from __future__ import annotations

import logging
import signal
import threading

import pytorch_lightning as pl

from .errors import ConfigError, RunStopped

log = logging.getLogger(__name__)

DEFAULT_STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
UNCATCHABLE = ("SIGKILL", "SIGSTOP")
LIGHTNING_TOUCHES = (signal.SIGTERM,)  # what Lightning's Trainer handles itself during fit


def parse_stop_signals(names, key: str = "trainer.stop_signals") -> list[signal.Signals]:
    """The signals named in ``names`` (``SIGTERM``, ``TERM`` or a number); ConfigError otherwise."""
    if not isinstance(names, (list, tuple)):
        raise ConfigError(f"{key}={names!r} must be a list of signal names, e.g. [SIGTERM,SIGUSR1,SIGINT] (or [] for none).")
    known = sorted(s.name for s in signal.valid_signals() if isinstance(s, signal.Signals))
    parsed = []
    for name in names:
        text = str(name).strip().upper()
        if text.isdigit():
            try:
                sig = signal.Signals(int(text))
            except ValueError:
                sig = None
        else:
            sig = getattr(signal.Signals, text if text.startswith("SIG") else "SIG" + text, None)
        if sig is None or sig.name in UNCATCHABLE:
            why = "cannot be caught by any process" if sig is not None else "is not a signal of this system"
            raise ConfigError(
                f"{key} has {name!r}, which {why}; name signals a process can catch, e.g. SIGTERM, SIGUSR1, "
                f"SIGUSR2, SIGINT (known here: {', '.join(n for n in known if n not in UNCATCHABLE)})."
            )
        parsed.append(sig)
    return parsed


class StopSignals:
    """Context manager: while it is active, the stop signals set ``requested`` instead of killing
    the process; on exit the previous handlers are back. Outside the main thread (where Python
    cannot install handlers) it does nothing and the signals keep their usual effect."""

    def __init__(self, names=DEFAULT_STOP_SIGNALS):
        self.signals = parse_stop_signals(list(names))
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._outer: dict[signal.Signals, object] = {}  # handlers before the run, of LIGHTNING_TOUCHES

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str | None:
        return self.received.name if self.received is not None else None

    def _handle(self, signum, frame) -> None:
        sig = signal.Signals(signum)
        if self.received is not None and sig == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl+C twice: stop now, without the checkpoint
        if self.received is None:
            self.received = sig
            log.warning("Received %s: finishing the current step, then writing a checkpoint and stopping "
                        "(exit code 75: resume the run to continue).", sig.name)

    def install(self) -> None:
        """(Re)install the handlers. Lightning's Trainer installs its own SIGTERM handler when fit
        begins (it ends the run with exit code 0, as if finished); ``GracefulStop`` calls this
        then, which puts this one back, or, where SIGTERM is not a stop signal, the handler
        SIGTERM had before the run (by default: terminate)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in LIGHTNING_TOUCHES:
            self._outer.setdefault(sig, signal.getsignal(sig))
            if sig not in self.signals:
                signal.signal(sig, self._outer[sig] if self._outer[sig] is not None else signal.SIG_DFL)
        for sig in self.signals:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def __enter__(self) -> "StopSignals":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def stopped(self, run_dir, step: int | None, what: str) -> RunStopped:
        """The RunStopped error (one paragraph) for a stop at ``step``; ``what``: what was kept."""
        at = f" at step {step}" if step is not None else ""
        return RunStopped(
            f"Stopped by {self.name}{at}: {what} Resume with `scorelift resume={run_dir}` (exit code 75 means "
            f"\"stopped, resume me\")."
        )


class GracefulStop(pl.Callback):
    """At the end of a step after a stop signal: write the checkpoint (through the run's
    ``CheckpointKeeper``) and end training; the step's metric rows reach the log when Lightning
    tears down. Written here, not when training ends: ending the epoch early would store the
    next epoch's number. Last in the callback list, so the step's own evaluation and images are
    done first."""

    def __init__(self, stop: StopSignals, keeper):
        self.stop, self.keeper = stop, keeper
        self.stopped_at: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.stop.install()  # replaces the SIGTERM handler Lightning composed when fit began
        if self.stop.requested:  # arrived while the run was being set up
            self._stop(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.stop.requested and self.stopped_at is None:
            self._stop(trainer)

    def _stop(self, trainer) -> None:
        self.keeper.save(trainer)
        self.stopped_at = int(trainer.global_step)
        trainer.should_stop = True
        log.warning("Stopped by %s after step %d; checkpoint written.", self.stop.name, self.stopped_at)

"""Error types that carry a one-paragraph, user-facing explanation, and the exit codes they map to.

Exit codes of ``scorelift`` (and ``python launch.py``), which launchers and the benchmark read:

    0   the run finished (or --list / --cfg / --help)
    1   an unexpected error (a traceback: a bug to report)
    2   bad input: nothing was written (ConfigError, PluginError, PriorLoadError, RunDirInUse)
    74  a write failed for lack of space (RunWriteError): the last checkpoint is intact; free space
        and resume
    75  stopped by a signal (RunStopped: SIGTERM, SIGUSR1, SIGINT by default) after writing a
        checkpoint: "resume me", never "finished"
"""

EXIT_FINISHED = 0
EXIT_BAD_INPUT = 2
EXIT_WRITE_FAILED = 74  # sysexits.h EX_IOERR
EXIT_STOPPED = 75  # sysexits.h EX_TEMPFAIL: a temporary failure; the run is to be resumed


class ScoreliftError(Exception):
    """Base class: the message is meant for the user, not a traceback reader."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(ScoreliftError, ValueError):
    """A config value, key or combination the framework cannot accept."""


class PluginError(ScoreliftError, LookupError):
    """An unknown plugin name, or a plugin that failed to load or register."""


class PriorLoadError(ScoreliftError, OSError):
    """A diffusion prior (model directory or hub id) that is missing or incomplete."""


class RunDirInUse(ScoreliftError):
    """Another live process holds the run directory's lock (a twin launch, or a resume of a run
    that is still running)."""


class RunStopped(ScoreliftError):
    """A stop signal arrived: the run wrote a checkpoint and stopped, to be resumed."""

    exit_code = EXIT_STOPPED


class RunWriteError(ScoreliftError, OSError):
    """A write of the run failed for lack of space (or a file-size limit); the last good
    checkpoint is intact and resumable."""

    exit_code = EXIT_WRITE_FAILED

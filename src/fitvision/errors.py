"""The exception types for problems a user can fix."""


class FitVisionError(Exception):
    """A failure caused by input or environment, with a message a user can act on.

    The CLI prints it as a single ``error: ...`` line and exits with status 1;
    every other exception is a bug and keeps its traceback under FITVISION_DEBUG=1.
    """


class UsageError(FitVisionError):
    """A command line whose options are wrong in themselves (an unknown model, a negative epoch
    count, a bad --config file), found before any work: the CLI exits with status 2, as for the
    argument errors argparse finds itself."""


def check_choice(name: str, value: object, valid: tuple[str, ...] | list[str]) -> None:
    """The one message for a value outside a fixed list; each list lives beside what it names."""
    if value not in valid:
        raise FitVisionError(f"unknown {name} '{value}' ({did_you_mean(value, valid)}valid: {', '.join(valid)})")


def did_you_mean(value: object, valid) -> str:
    """"did you mean 'X'? " for a valid name close to ``value`` (difflib's ratio >= 0.75; of those,
    the one that starts most like it: resnet10 -> resnet9, not xresnet50), else ""."""
    import difflib
    import os.path

    text = str(value)
    names = [str(v) for v in valid]
    close = difflib.get_close_matches(text, names, n=len(names), cutoff=0.75)
    if not close:
        return ""
    best = max(close, key=lambda c: len(os.path.commonprefix([c, text])))  # max keeps the first of a tie
    return f"did you mean '{best}'? "


class Terminated(KeyboardInterrupt):
    """The process was asked to stop from outside (SIGTERM: SLURM, Kubernetes, a spot instance's
    notice). A KeyboardInterrupt, so that whatever handles Ctrl-C (say how to go on, clean up)
    handles it too; the CLI exits with 128 + the signal's number (143 for SIGTERM)."""

    def __init__(self, message: str = "", signum: int = 15):
        super().__init__(message)
        self.signum = signum

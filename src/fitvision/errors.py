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
        raise FitVisionError(f"unknown {name} '{value}' (valid: {', '.join(valid)})")

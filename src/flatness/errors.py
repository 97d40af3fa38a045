"""The one exception type users see for bad input or missing data."""


class FlatnessError(ValueError):
    """Bad input, missing data or a diverged run, with a message that names the fix.

    The command line prints the message (no traceback) and exits with code 2.
    """


def unknown(kind: str, name: object, valid) -> FlatnessError:
    """An error for a name that is not one of the valid choices, listing them."""
    choices = ", ".join(repr(v) for v in valid)
    return FlatnessError(f"unknown {kind} {name!r}; valid choices: {choices}")


class RunDiverged(FlatnessError):
    """A training run whose loss became NaN or infinite: the store records it as failed.

    Other errors (missing data, bad settings) are not the run's result and are not recorded.
    """


class RunMissing(FlatnessError):
    """A run that is neither published nor stored, asked for without leave to train it.

    ``config`` is the missing run's :class:`~flatness.config.RunConfig`.
    """

    def __init__(self, config):
        self.config = config
        super().__init__(
            f"the run {config.label()} ({config.key()}) is neither published nor in the results "
            "store, and training was not asked for (--train-missing, or "
            "`python -m flatness sweep` for the chapter's grid)"
        )

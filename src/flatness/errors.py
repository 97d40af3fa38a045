"""The one exception type users see for bad input or missing data."""


class FlatnessError(ValueError):
    """Bad input, missing data or a diverged run, with a message that names the fix.

    The command line prints the message (no traceback) and exits with code 2.
    """


def unknown(kind: str, name: object, valid) -> FlatnessError:
    """An error for a name that is not one of the valid choices, listing them."""
    choices = ", ".join(repr(v) for v in valid)
    return FlatnessError(f"unknown {kind} {name!r}; valid choices: {choices}")


#: A run whose final training loss is above this multiple of ln K (K classes; ln K is the loss of
#: predicting every class alike) has diverged: its predictions are confidently wrong.
DIVERGED_MULTIPLE = 2.0


class RunDiverged(FlatnessError):
    """A training run whose loss became NaN or infinite, or ended above
    :data:`DIVERGED_MULTIPLE` x ln K: the store records it as failed.

    Other errors (missing data, bad settings) are not the run's result and are not recorded.
    """


class RunMissing(FlatnessError):
    """Runs that are neither published nor stored, asked for without leave to train them.

    ``configs`` lists every missing run's :class:`~flatness.training.config.RunConfig` (a lookup of
    several runs says all of them at once); ``config`` is the first.
    """

    def __init__(self, configs):
        self.configs = list(configs) if isinstance(configs, (list, tuple)) else [configs]
        self.config = self.configs[0]
        more = f" and {len(self.configs) - 1} more" if len(self.configs) > 1 else ""
        super().__init__(
            f"the run {self.config.label()} ({self.config.key()}){more} is neither published "
            "nor in the results store, and training was not asked for (--train-missing, or "
            "`python -m flatness sweep` for the chapter's grid)"
        )

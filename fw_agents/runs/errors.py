"""How a run stops on its own: :class:`NonFiniteError`."""


class NonFiniteError(RuntimeError):
    """A run produced a non-finite loss or parameter and stopped (earlier files are kept);
    :func:`fw_agents.cli.run_cli` reports it in one line with exit status 1. Raised by the agents'
    :class:`~fw_agents.runs.callbacks.StopOnNonFinite` and the supervised tasks' training loop."""

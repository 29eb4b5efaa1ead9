"""Errors raised by the training engine."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""

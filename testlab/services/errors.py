"""Errors a user can act on: the CLI prints them as one line and exits 1."""


class UserError(Exception):
    """A request that cannot be carried out as asked (unknown VM, job already finished...)."""


class NotFound(UserError):
    """The job, task, VM, host or file asked for does not exist (the API answers 404)."""

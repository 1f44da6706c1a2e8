"""What the agent client raises: infrastructure errors, each with the class that decides what follows."""

from __future__ import annotations


class AgentError(Exception):
    """Base of everything this client raises."""


class AgentUnreachable(AgentError):
    """No answer from the agent within the retry deadline: an infrastructure error, never a test failure."""


class AuthenticationRefused(AgentError):
    """The agent refused our token: retrying cannot help."""


class CommandUnknown(AgentError):
    """The command is gone: the VM was reverted or rebooted, so its work is lost."""


class BootChanged(CommandUnknown):
    """A start was refused: the agent is not the one (boot id) the caller prepared the VM for."""


class ProtocolError(AgentError):
    """The agent refused the request (bad path, too large...) or answered something unexpected.

    `code` is the agent's machine-readable reason when it gave one (e.g. `artifacts_too_many`)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class Retryable(Exception):
    """An answer meaning 'try again later' (a proxy in between could not reach the agent)."""


class UploadLost(AgentError):
    """The agent no longer holds a staged upload (it restarted): the whole upload must be sent again."""


class TransportFailure(Exception):
    """A connection broke or timed out: as retryable as an httpx transport error."""

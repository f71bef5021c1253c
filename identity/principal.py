"""The identity behind every action: always one human, and the agent acting for them if any."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from django.contrib.auth.models import User

from identity.models import Agent


@dataclass(frozen=True)
class Principal:
    """``human`` is the accountable person: the agent's owner, or the human who signed in."""

    human: User
    agent: Agent | None = None

    @property
    def is_agent(self) -> bool:
        return self.agent is not None

    @property
    def kind(self) -> str:
        return "agent" if self.agent is not None else "human"

    def describe(self) -> str:
        if self.agent is not None:
            return f"{self.agent.name} on behalf of {self.human.get_username()}"
        return self.human.get_username()

    @functools.cached_property
    def identity_kind(self) -> str:
        """Which column of the masking policy applies: agent, reviewer, or (any other human) engineer."""
        from identity.roles import Role, has_role

        if self.agent is not None:
            return "agent"
        return "reviewer" if has_role(self.human, Role.REVIEWER) else "engineer"

    @classmethod
    def for_agent(cls, agent: Agent) -> Principal:
        return cls(human=agent.owner, agent=agent)

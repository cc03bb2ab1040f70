"""What starts a rollout, as the admin API takes it (``controller.rollout_admin``) and the model
tag ``sigserve.rollout`` spells it (``controller.rollout_auto``): one set of checks and defaults."""

from __future__ import annotations

import itertools
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.rollout_gates import Thresholds
from controller.rollout_store import RolloutSpec


class StartRollout(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidate: Annotated[str, Field(pattern=r"^[0-9]{1,32}$")]
    # The candidate's share of the requests that name no version at each step, in percent,
    # increasing; the last step's end promotes. A first step of 0 is a shadow alone.
    steps: Annotated[list[float], Field(min_length=1, max_length=20)] = [5, 25, 50, 100]
    # How long each step lasts at least (seconds), and the requests it must see at least.
    step_s: Annotated[float, Field(gt=0, le=30 * 86_400)] = 600.0
    min_requests: Annotated[int, Field(ge=0, le=10**9)] = 100
    # The share of the default's requests also sent to the candidate, in percent.
    shadow: Annotated[float, Field(ge=0, le=100)] = 0.0
    thresholds: Thresholds = Thresholds()

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[float]) -> list[float]:
        if any(not 0 <= s <= 100 for s in steps):
            raise ValueError("each step is a percentage from 0 to 100")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError("steps must increase")
        if steps[-1] <= 0:
            raise ValueError("the last step must give the candidate some traffic")
        return steps

    @model_validator(mode="after")
    def _shadow_first(self) -> StartRollout:
        if self.steps[0] == 0 and self.shadow == 0:
            raise ValueError("steps: a first step of 0 is a shadow alone; set 'shadow'")
        return self

    def spec(self) -> RolloutSpec:
        """Percentages as the shares the store and the table keep."""
        return RolloutSpec(
            candidate=self.candidate,
            steps=[s / 100 for s in self.steps],
            hold_s=self.step_s,
            min_requests=self.min_requests,
            shadow=self.shadow / 100,
            thresholds=self.thresholds,
        )

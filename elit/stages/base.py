"""The base class shared by every stage kind."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class StageConfig(BaseModel):
    """Base for every stage's nested ``Config``: strict, frozen, described fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Stage:
    """A pluggable pipeline step.

    Subclasses set the class attributes ``kind`` (set by the kind's base class),
    ``name``, ``version`` and ``description`` and define a nested ``Config``
    (a :class:`StageConfig`).  The constructor takes only a validated config;
    state learned at run time ends in ``_``.  Stages never open files.

    Parameters
    ----------
    config : Config, dict or None
        The stage's settings; a dict is validated with ``Config``.
    **params
        Settings given as keywords (merged over ``config`` when it is a dict).
    """

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    description: ClassVar[str] = ""

    class Config(StageConfig):
        pass

    def __init__(self, config: StageConfig | dict[str, Any] | None = None, **params: Any) -> None:
        if isinstance(config, StageConfig):
            if params:
                config = config.model_copy(update=params)
                config = type(config).model_validate(config.model_dump())
        else:
            config = self.Config.model_validate({**(config or {}), **params})
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__qualname__}, got {type(config).__name__}")
        self.config = config

    def get_params(self) -> dict[str, Any]:
        """Return the settings as JSON-compatible values."""
        return self.config.model_dump(mode="json")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_params()!r})"

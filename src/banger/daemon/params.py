"""Helpers handlers use to turn wire params into typed models and results into JSON."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from banger.rpc.errors import BadRequest
from banger.validation import describe

M = TypeVar("M", bound=BaseModel)


class Params(BaseModel):
    """Base for RPC params: unknown fields are an error, so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid")


def parse_params(model: type[M], params: dict[str, Any]) -> M:
    try:
        return model.model_validate(params)
    except ValidationError as e:
        raise BadRequest(describe(e, noun="parameter", top="params")) from None


def to_json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value

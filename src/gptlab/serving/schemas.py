"""Request bodies of the HTTP API, and the limits the server enforces on them.

Types are strict (a string "10" is not a number, true is not 1) and unknown fields are refused, so a
misspelt option fails with a message naming it instead of being silently ignored. OpenAI fields that
gptlab does not implement are accepted only at their neutral values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """A request the server refuses: HTTP status, the offending field, and a message naming it."""

    def __init__(self, status: int, param: str | None, message: str):
        super().__init__(message)
        self.status, self.param, self.message = status, param, message


@dataclass(frozen=True)
class Limits:
    """Caps from conf/serve.yaml `limits` (max_prompt_tokens None: the model's block_size - 1)."""

    max_tokens: int = 256
    max_prompt_tokens: int | None = None
    max_n: int = 4
    max_num_beams: int = 8
    max_logprobs: int = 10
    max_top_n: int = 50
    max_attention_tokens: int = 96
    max_prompt_chars: int = 100_000


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class CompletionRequest(_Strict):
    model: str | None = None
    prompt: str | list[str] = ""
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    logprobs: int | None = Field(None, ge=0)
    # OpenAI fields gptlab does not implement: accepted at their neutral values only
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, Any] | None = None
    user: str | None = None
    stream_options: dict[str, Any] | None = None
    # gptlab extras
    strategy: Literal["greedy", "sample", "beam"] | None = None
    top_k: int | None = Field(None, ge=1)
    num_beams: int = Field(1, ge=1)
    length_penalty: float = 1.0


class TextRequest(_Strict):
    """A text (or its token ids) to look into: /v1/next_token and /v1/attention."""

    model: str | None = None
    prompt: str | None = None
    ids: list[int] | None = None
    top_n: int = Field(10, ge=1)


NEUTRAL = {"echo": False, "suffix": None, "best_of": (None, 1), "presence_penalty": 0.0,
           "frequency_penalty": 0.0, "logit_bias": (None, {})}


def check_completion(req: CompletionRequest, limits: Limits) -> None:
    """Raise ApiError (400) for values the types allow but the server does not."""
    for name, neutral in NEUTRAL.items():
        allowed = neutral if isinstance(neutral, tuple) else (neutral,)
        if getattr(req, name) not in allowed:
            raise ApiError(400, name, f"{name}={getattr(req, name)!r} is not supported by gptlab; "
                                      f"leave it out (neutral value {allowed[0]!r})")
    caps = {"max_tokens": limits.max_tokens, "n": limits.max_n, "num_beams": limits.max_num_beams,
            "logprobs": limits.max_logprobs}
    for name, cap in caps.items():
        value = getattr(req, name)
        if value is not None and value > cap:
            raise ApiError(400, name, f"{name}={value} is above this server's limit of {cap} "
                                      f"(conf/serve.yaml limits)")
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not prompts or len(prompts) * req.n > limits.max_n:
        raise ApiError(400, "prompt", f"prompt: give a string or 1..{limits.max_n // req.n} strings "
                                      f"(prompts × n must be <= {limits.max_n}), got {len(prompts)}")
    stops = [req.stop] if isinstance(req.stop, str) else req.stop or []
    if len(stops) > 4 or any(not s for s in stops):
        raise ApiError(400, "stop", f"stop: up to 4 non-empty strings, got {req.stop!r}")
    _check_strategy(req)


def _check_strategy(req: CompletionRequest) -> None:
    strategy = strategy_of(req)
    if strategy == "beam":
        given = [f for f in ("temperature", "top_p", "top_k", "seed") if f in req.model_fields_set]
        if given:
            raise ApiError(400, given[0], f"{given[0]} does not apply to strategy 'beam' "
                                          f"(beam search is deterministic); leave it out")
        if req.n > req.num_beams:
            raise ApiError(400, "n", f"n={req.n} > num_beams={req.num_beams}: beam search returns at "
                                     f"most num_beams hypotheses")
    elif req.num_beams != 1:
        raise ApiError(400, "num_beams", f"num_beams={req.num_beams} needs strategy 'beam' "
                                         f"(got {strategy!r})")
    if strategy == "greedy" and ({"top_p", "top_k"} & req.model_fields_set):
        raise ApiError(400, "strategy", "strategy 'greedy' takes the most likely token: top_k and top_p "
                                        "apply to strategy 'sample'")


def strategy_of(req: CompletionRequest) -> str:
    """The explicit strategy, else OpenAI's rule: temperature 0 is greedy, anything else samples."""
    if req.strategy is not None:
        return req.strategy
    return "greedy" if req.temperature == 0 else "sample"

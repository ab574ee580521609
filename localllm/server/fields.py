"""Request bodies: typed field access that turns a wrong or missing value into a 400 naming the
field, and the one error type every route maps to an HTTP status."""
from __future__ import annotations

from typing import Any

from ..errors import LocalLLMError


class RequestError(LocalLLMError):
    """A request the server refuses; status is the HTTP status, code OpenAI's error code."""

    def __init__(self, message: str, status: int = 400, code: str | None = None, param: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.param, self.kind, self.headers = status, code, param, kind, headers or {}


_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array",
          dict: "an object"}


def get(body: dict, name: str, kind: type, default: Any = None) -> Any:
    """body[name] checked against kind (an int is a number; a bool is neither); None or absent:
    default."""
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise RequestError(f"'{name}' must be {_NAMES[kind]}", param=name)
    return value


def bounded(body: dict, name: str, kind: type, default: Any, lo: float | None = None,
            hi: float | None = None) -> Any:
    value = get(body, name, kind, default)
    if value is not None and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        raise RequestError(f"'{name}' must be between {lo} and {hi}, not {value}", param=name)
    return value


def stops(body: dict, name: str = "stop") -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return value
    raise RequestError(f"'{name}' must be a string or an array of strings", param=name)


def require(body: dict, name: str, kind: type) -> Any:
    value = get(body, name, kind)
    if value is None:
        raise RequestError(f"'{name}' is required", param=name)
    return value


def messages(body: dict) -> list[dict]:
    """Chat messages: role and content strings (content parts of type text are joined)."""
    msgs = require(body, "messages", list)
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with a string 'role'", param="messages")
        content = m.get("content") or ""
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise RequestError(f"messages[{i}].content: only text parts are supported", param="messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be a string", param="messages")
        out.append({**m, "content": content})
    if not out:
        raise RequestError("'messages' must not be empty", param="messages")
    return out

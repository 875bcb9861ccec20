"""A minimal client for any OpenAI-compatible chat endpoint (`POST {base_url}/chat/completions`)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from braid.errors import BraidError, InvalidRequestError


class EndpointError(BraidError):
    """The endpoint cannot serve this run at all (unreachable, bad key, unknown model): stop."""


class TransientError(Exception):
    """A request failed in a way that may pass on retry (timeout, 429, 5xx, malformed reply)."""


class _Unreachable(TransientError):
    """No connection: retried, then the whole run stops (every request would fail alike)."""


@dataclass(frozen=True)
class EndpointConfig:
    base_url: str  # up to the API version, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None = None
    temperature: float = 0.2
    timeout_s: float = 300.0

    @classmethod
    def resolve(
        cls,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> EndpointConfig:
        """Arguments first, then BRAID_CURATOR_BASE_URL / _MODEL / _API_KEY, then OPENAI_*."""

        def pick(value: str | None, name: str) -> str | None:
            return (
                value or os.environ.get(f"BRAID_CURATOR_{name}") or os.environ.get(f"OPENAI_{name}")
            )

        url, name = pick(base_url, "BASE_URL"), pick(model, "MODEL")
        if not url:
            raise InvalidRequestError(
                "no chat endpoint: pass --endpoint URL (e.g. http://127.0.0.1:8000/v1) or set "
                "BRAID_CURATOR_BASE_URL or OPENAI_BASE_URL"
            )
        if not url.startswith(("http://", "https://")):
            raise InvalidRequestError(f"endpoint {url!r} must start with http:// or https://")
        if not name:
            raise InvalidRequestError(
                "no model name: pass --model NAME or set BRAID_CURATOR_MODEL or OPENAI_MODEL"
            )
        return cls(url.rstrip("/"), name, pick(api_key, "API_KEY"), **kwargs)


class ChatClient:
    """Sends chat requests; retries transient failures `max_retries` times with backoff."""

    def __init__(self, config: EndpointConfig, max_retries: int = 2, retry_delay_s: float = 1.0):
        import httpx  # the `curate` extra

        self.config = config
        self.max_retries = max_retries
        self.retry_delay_s = retry_delay_s
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._httpx = httpx
        self._client = httpx.AsyncClient(headers=headers, timeout=config.timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def complete(self, messages: list[dict[str, str]]) -> str:
        """The assistant's reply text; raises TransientError after the last retry fails."""
        for attempt in range(self.max_retries + 1):
            try:
                return await self._once(messages)
            except TransientError as e:
                if attempt == self.max_retries:
                    if isinstance(e, _Unreachable):
                        raise EndpointError(str(e)) from None
                    raise
                await asyncio.sleep(self.retry_delay_s * 2**attempt)
        raise AssertionError("unreachable")

    async def _once(self, messages: list[dict[str, str]]) -> str:
        url = f"{self.config.base_url}/chat/completions"
        body = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
        }
        try:
            r = await self._client.post(url, json=body)
        except self._httpx.ConnectError as e:
            raise _Unreachable(f"cannot reach the chat endpoint {url}: {e}") from None
        except self._httpx.HTTPError as e:
            raise TransientError(f"request to {url} failed: {type(e).__name__}: {e}") from None
        if r.status_code in (401, 403, 404):
            raise EndpointError(
                f"{url} answered {r.status_code} ({r.text[:200].strip()}): check --endpoint, "
                "--model and the API key (BRAID_CURATOR_API_KEY or OPENAI_API_KEY)"
            )
        if r.status_code >= 400:
            raise TransientError(f"{url} answered {r.status_code}: {r.text[:200].strip()}")
        try:
            content = r.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise TransientError(f"{url} sent a reply without choices[0].message.content") from None
        if not isinstance(content, str) or not content.strip():
            raise TransientError(f"{url} sent an empty reply")
        return content

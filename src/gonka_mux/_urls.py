"""Endpoint base URLs: checked when an endpoint is added, so a typo fails at once, not later."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["check_base_url"]


def check_base_url(url: str) -> str:
    """Return ``url`` if it is an absolute http(s) URL with a host; raise ``ValueError`` if not.

    ``"127.0.0.1:8000"`` (no scheme) would otherwise be read as a relative path and fail on the
    first request with a confusing error.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"endpoint URL must be a non-empty string, got {url!r}")
    text = url.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise ValueError(f"invalid endpoint URL {text!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        guess = f"http://{text}" + ("" if "/" in text else "/v1")
        hint = f" (did you mean {guess!r}?)" if "://" not in text else ""
        raise ValueError(
            f"endpoint URL {text!r} needs a scheme and a host, like "
            f"'http://127.0.0.1:8000/v1' or 'https://api.example.com/v1'{hint}"
        )
    return text

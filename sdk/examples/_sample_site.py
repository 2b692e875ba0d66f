"""A made-up company website, bundled so that onboard_site runs offline: 240 pages."""

from __future__ import annotations

import functools
import html

from longline import _offline_text

SITE = "https://acme-tides.example"
_SECTIONS = {"docs": ("doc", 120), "products": ("product", 40), "blog": ("post", 80)}


@functools.cache
def pages() -> dict[str, str]:
    """Path -> HTML of every page of the sample site."""
    out: dict[str, str] = {}
    for section, (kind, count) in _SECTIONS.items():
        for n in range(1, count + 1):
            path = f"/{section}/{kind}-{n:03d}"
            rng = _offline_text.seeded("page", path)
            title = f"{section.title()} {n}: " + " ".join(
                _offline_text.sentence(rng, "tidal instruments").split()[1:5]
            )
            body = "".join(
                f"<p>{html.escape(_offline_text.sentence(rng, 'tidal instruments'))}</p>"
                for _ in range(5)
            )
            out[path] = (
                f"<html><head><title>{html.escape(title)}</title></head><body>{body}</body></html>"
            )
    return out


def index() -> str:
    """The home page: links to every page."""
    links = "".join(f'<a href="{p}">{p}</a>' for p in pages())
    return f"<html><head><title>Acme Tides</title></head><body>{links}</body></html>"

"""Example workflows; `longline dev` serves every workflow in this package."""

from __future__ import annotations

from .blog_post import blog_post
from .onboard_site import onboard_site

__all__ = ["blog_post", "onboard_site"]

"""Example workflows; `longline dev` serves every workflow in this package."""

from __future__ import annotations

from .blog_post import blog_post
from .onboard_site import learn_page, onboard_site
from .reviewed_post import reviewed_post

__all__ = ["blog_post", "learn_page", "onboard_site", "reviewed_post"]

"""blog_post: research a topic, outline it, write each section (streamed), assemble.

Runs with no API key: an offline text generator stands in for the model and the
run says so in its first status.
"""

from __future__ import annotations

import asyncio
from typing import Any

import longline

from . import _offline


@longline.component(retry=longline.Retry(max_attempts=3, initial=0.2, maximum=2))
async def research(topic: str) -> list[str]:
    """Gather notes on the topic."""
    return _offline.facts(topic)


@longline.component(retry=longline.Retry(max_attempts=3, initial=0.2, maximum=2))
async def outline(topic: str, notes: list[str], sections: int) -> list[str]:
    """Plan the section titles."""
    return _offline.titles(topic, sections)


@longline.component(retry=longline.Retry(max_attempts=3, initial=0.2, maximum=2))
async def write_section(topic: str, title: str, pace: float) -> str:
    """Write one section, streaming it word by word to watchers."""
    ctx = longline.current()
    await ctx.output(f"\n## {title}\n\n")
    words = _offline.paragraph_words(topic, title)
    for i, word in enumerate(words):
        await ctx.output(word + (" " if i < len(words) - 1 else "\n"))
        if pace:
            await asyncio.sleep(pace)
    return " ".join(words)


@longline.component
async def assemble(topic: str, titles: list[str], bodies: list[str]) -> str:
    """Join the sections into one markdown article."""
    parts = [f"# {topic.title()}"]
    for title, body in zip(titles, bodies, strict=True):
        parts.append(f"## {title}\n\n{body}")
    return "\n\n".join(parts) + "\n"


@longline.workflow(name="blog_post", description="Research, outline, write and assemble a post.")
async def blog_post(ctx: longline.Context, input: Any) -> dict[str, Any]:
    """Research, outline, write and assemble a blog post about input["topic"]."""
    if not isinstance(input, dict) or not isinstance(input.get("topic"), str):
        raise longline.NonRetryable('blog_post needs an input like {"topic": "tides"}')
    topic = input["topic"]
    sections = int(input.get("sections", 4))
    pace = float(input.get("pace", 0.02))
    await ctx.status(f"using the {_offline.NOTICE}")
    await ctx.status(f"researching {topic}")
    notes = await research(topic)
    await ctx.status("outlining")
    titles = await outline(topic, notes, sections)
    bodies = []
    for n, title in enumerate(titles, 1):
        await ctx.status(f"writing section {n} of {len(titles)}: {title}")
        bodies.append(await write_section(topic, title, pace))
    await ctx.status("assembling")
    article = await assemble(topic, titles, bodies)
    return {"topic": topic, "sections": titles, "words": len(article.split()), "article": article}

"""blog_post: research a topic, outline it, write the sections in parallel, assemble.

Every model call goes through `longline.llm`: with no provider configured,
`longline dev` serves an offline model and the run's first status says so.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import longline
from longline import llm


def _title(line: str) -> str:
    words = re.sub(r"^[\s\-*\d.)#]+", "", line).rstrip(".").split()
    return " ".join(words[:7]).strip() or "Untitled"


@longline.component
async def assemble(topic: str, intro: str, titles: list[str], bodies: list[str]) -> str:
    """Join the intro and sections into one markdown article."""
    parts = [f"# {topic.title()}", intro.strip()]
    for title, body in zip(titles, bodies, strict=True):
        parts.append(f"## {title}\n\n{body.strip()}")
    return "\n\n".join(parts) + "\n"


def _topic(input: Any, workflow: str) -> tuple[str, int]:
    if not isinstance(input, dict) or not isinstance(input.get("topic"), str):
        raise longline.NonRetryable(f'{workflow} needs an input like {{"topic": "tides"}}')
    return input["topic"], max(1, min(int(input.get("sections", 4)), 12))


async def research_and_outline(ctx: longline.Context, topic: str, n: int) -> list[str]:
    """Research the topic and outline it: the titles of `n` sections."""
    provider = llm.providers()[0]
    where = "the offline model" if os.environ.get("LONGLINE_OFFLINE_MODEL") else provider.name
    await ctx.status(f"writing with {provider.model} at {where}")

    await ctx.status(f'researching "{topic}"')
    notes = await llm.complete(f'List the key facts a reader should know about "{topic}".')
    await ctx.status("outlining")
    outline = await llm.complete(
        f'Outline a blog post about "{topic}" in {n} sections, one title per line.\n\n{notes}'
    )
    titles = [_title(line) for line in outline.splitlines() if line.strip()][:n]
    return titles + [f"{topic.title()}, part {i + 1}" for i in range(len(titles), n)]


async def write_post(ctx: longline.Context, topic: str, titles: list[str]) -> dict[str, Any]:
    """Write the introduction and the sections (in parallel), and assemble the post."""
    n = len(titles)
    await ctx.status("introduction")
    await ctx.output(f"# {topic.title()}\n\n")
    intro = await llm.complete(f'Write a short introduction to "{topic}".', stream=True)
    await ctx.output("\n")

    await ctx.status(f"writing {n} sections in parallel")
    done = 0

    async def write(title: str) -> str:
        nonlocal done
        body = await llm.complete(f'For a post about "{topic}", write the section: {title}.')
        done += 1
        await ctx.output(f"\n## {title}\n\n{body.strip()}\n")
        await ctx.status(f"{done}/{n} sections written")
        await ctx.progress(done, n)
        return body

    bodies = await asyncio.gather(*(write(t) for t in titles))
    await ctx.status("assembling")
    article = await assemble(topic, intro, titles, list(bodies))
    return {"topic": topic, "sections": titles, "words": len(article.split()), "article": article}


@longline.workflow(name="blog_post", description="Research, outline, write and assemble a post.")
async def blog_post(ctx: longline.Context, input: Any) -> dict[str, Any]:
    """Research, outline, write (in parallel) and assemble a post about input["topic"]."""
    topic, n = _topic(input, "blog_post")
    titles = await research_and_outline(ctx, topic, n)
    return await write_post(ctx, topic, titles)

"""reviewed_post: blog_post with a person in the loop. The run outlines the post, then waits
(parked, holding no worker) until someone approves the outline, edits it, or rejects it.

    longline run reviewed_post --input '{"topic": "tides"}'     # asks on a terminal
    longline input RUN_ID outline --data '{"approved": true}'   # or answer from anywhere

Input {"topic": ..., "sections": n, "review_timeout": seconds}: with a timeout, an outline
nobody reviewed in time is used as it is.
"""

from __future__ import annotations

from typing import Any

import longline

from .blog_post import _topic, research_and_outline, write_post

OUTLINE_REVIEW = {
    "type": "object",
    "properties": {
        "approved": {"type": "boolean", "description": "write the post"},
        "sections": {
            "type": "array",
            "description": "section titles to write instead of the outline's",
            "items": {"type": "string", "minLength": 1, "maxLength": 200},
            "minItems": 1,
            "maxItems": 12,
        },
    },
    "required": ["approved"],
    "additionalProperties": False,
}


@longline.workflow(
    name="reviewed_post",
    description="Outline a post, wait for a person to approve or edit the outline, write it.",
)
async def reviewed_post(ctx: longline.Context, input: Any) -> dict[str, Any]:
    """Outline, ask for review (the input "outline"), then write what was approved."""
    topic, n = _topic(input, "reviewed_post")
    titles = await research_and_outline(ctx, topic, n)
    outline = "\n".join(f"  {i + 1}. {t}" for i, t in enumerate(titles))
    await ctx.status("waiting for a review of the outline")
    timeout = input.get("review_timeout")
    try:
        review = await ctx.wait_for_input(
            "outline",
            schema=OUTLINE_REVIEW,
            prompt=f'The outline of "{topic}":\n{outline}\nApprove it, or give the sections '
            "to write instead.",
            timeout=float(timeout) if timeout is not None else None,
        )
    except longline.InputTimeout:
        await ctx.status("nobody reviewed the outline in time: writing it as it is")
        review = {"approved": True}
    if not review["approved"]:
        await ctx.status("the outline was rejected")
        return {"topic": topic, "rejected": True, "outline": titles}
    titles = review.get("sections") or titles
    return await write_post(ctx, topic, titles)

"""onboard_site: learn a website. One call picks the pages worth reading, then one
extraction call per page (200 by default) under a concurrency limit shared by every
worker, with progress as it goes ("37/200 pages").

Without a URL it reads a sample site bundled with longline; with {"url": ...} and a
network it fetches the pages over HTTP.
"""

from __future__ import annotations

import asyncio
import html
import re
from typing import Any

import aiohttp

import longline
from longline import llm

from . import _sample_site


def _text(page: str) -> tuple[str, str]:
    title = re.search(r"<title>(.*?)</title>", page, re.S | re.I)
    body = re.sub(r"<[^>]+>", " ", page)
    return (
        html.unescape(title.group(1).strip()) if title else "",
        " ".join(html.unescape(body).split()),
    )


async def _fetch(url: str) -> str:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        response.raise_for_status()
        return await response.text()


@longline.component(retry=longline.Retry(max_attempts=4, initial=0.5, maximum=10))
async def discover(url: str) -> list[str]:
    """The site's pages (paths), from its home page's links."""
    if not url:
        return list(_sample_site.pages())
    home = await _fetch(url)
    paths = re.findall(r'href="(/[^"#?]*)"', home)
    return list(dict.fromkeys(paths))


@longline.component(
    retry=longline.Retry(max_attempts=4, initial=0.5, maximum=10), key=lambda url, path: path
)
async def read_page(url: str, path: str) -> dict[str, str]:
    """One page's title and text (a step keyed by its path)."""
    page = _sample_site.pages()[path] if not url else await _fetch(url.rstrip("/") + path)
    title, text = _text(page)
    return {"title": title, "text": text[:4000]}


@longline.workflow(
    name="onboard_site", description="Pick a site's key pages and extract what each says."
)
async def onboard_site(ctx: longline.Context, input: Any) -> dict[str, Any]:
    """Input: {"url": optional, "pages": 200, "concurrency": 16}."""
    input = input or {}
    url = str(input.get("url") or "")
    wanted = int(input.get("pages", 200))
    concurrency = int(input.get("concurrency", 16))
    site = url or _sample_site.SITE
    await ctx.status(f"discovering {site}")
    found = await discover(url)
    await ctx.status(f"{len(found)} pages found; choosing {wanted}")
    listing = "\n".join(f"- {p}" for p in found)
    answer = await llm.complete(
        f'Pick {wanted} pages that best explain what "{site}" offers:\n{listing}'
    )
    chosen = [p for p in (line.strip("- ").strip() for line in answer.splitlines()) if p in found]
    chosen = list(dict.fromkeys(chosen + found))[:wanted]  # a terse model gets topped up

    extract = llm.chat.with_limits(longline.Concurrency("onboard-llm", limit=concurrency))
    local = asyncio.Semaphore(concurrency)  # fewer local waiters on the shared limit
    done = 0

    async def learn(path: str) -> tuple[str, str]:
        nonlocal done
        async with local:
            page = await read_page(url, path)
            facts = await llm.complete(
                f'Extract the key facts from the page "{page["title"]}":\n{page["text"]}',
                using=extract,
                max_tokens=60,
            )
        done += 1
        await ctx.status(f"{done}/{len(chosen)} pages")
        return path, facts

    learned = dict(await asyncio.gather(*(learn(p) for p in chosen)))
    return {"site": site, "pages": len(learned), "facts": learned}

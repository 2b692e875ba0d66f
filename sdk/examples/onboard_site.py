"""onboard_site: learn a website. One call picks the pages worth reading, then each page
(200 by default) is read and its facts extracted by a child run of `learn_page`: the pages
spread over every worker that serves it, at most `concurrency` at a time, with progress as
they end (ctx.map).

Without a URL it reads a sample site bundled with longline; with {"url": ...} and a
network it fetches the pages over HTTP.
"""

from __future__ import annotations

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


@longline.workflow(name="learn_page", description="Read one page and extract its key facts.")
async def learn_page(ctx: longline.Context, input: Any) -> dict[str, str]:
    """Input: {"url": the site ('' for the sample), "path": the page}; a child of
    onboard_site."""
    url, path = str(input.get("url") or ""), str(input["path"])
    page = await read_page(url, path)
    facts = await llm.complete(
        f'Extract the key facts from the page "{page["title"]}":\n{page["text"]}',
        max_tokens=60,
    )
    return {"path": path, "title": page["title"], "facts": facts}


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
    await ctx.status(f"learning {len(chosen)} pages, {concurrency} at a time")
    # One child run per page, across the cluster; this run parks (holding no worker) while
    # they run, and wakes as they end to start the next ones.
    learned = await ctx.map(
        learn_page,
        [{"url": url, "path": path} for path in chosen],
        concurrency=concurrency,
        progress=True,
    )
    return {"site": site, "pages": len(learned), "facts": {p["path"]: p["facts"] for p in learned}}

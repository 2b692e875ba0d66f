"""The web UI's assets ship in the package and know every event type the protos have."""

from __future__ import annotations

import re
from importlib import resources

from longline.v1 import runs_pb2

UI = resources.files("longline.control_plane").joinpath("_ui")


def test_the_ui_listens_to_every_event_type() -> None:
    """EventSource hands a named event only to listeners of its name: a type the UI does
    not list would be dropped from the run view."""
    script = UI.joinpath("app.js").read_text()
    listed = re.search(r"const EVENT_TYPES = \[(.*?)\]\.map", script, re.S)
    assert listed is not None
    names = {"EVENT_TYPE_" + n for n in re.findall(r'"([A-Z_]+)"', listed.group(1))}
    assert names == set(runs_pb2.EventType.keys())


def test_the_page_loads_only_its_own_assets() -> None:
    page = UI.joinpath("index.html").read_text()
    for asset in re.findall(r'(?:src|href)="(/ui/assets/[^"]+)"', page):
        assert UI.joinpath(asset.removeprefix("/ui/assets/")).is_file(), asset
    # The Content-Security-Policy allows no inline script: every script has a src.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page)

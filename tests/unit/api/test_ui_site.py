"""The web UI the package carries: a page whose every script and stylesheet is a file
of the package (a commit with a half-built UI fails here, not in a user's browser)."""

from __future__ import annotations

import re

from relaygate.api.ui import site_root


def test_the_committed_build_is_whole() -> None:
    root = site_root()
    page = root.joinpath("index.html").read_text()
    assets = re.findall(r'(?:src|href)="/ui/([^"]+)"', page)
    assert {a.rsplit(".", 1)[1] for a in assets} == {"js", "css"}, assets
    for asset in assets:
        node = root
        for part in asset.split("/"):
            node = node.joinpath(part)
        assert node.is_file(), asset
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page)  # no CDN
    assert "<script>" not in page  # no inline script (the CSP forbids it)
    built = {p.name for p in root.joinpath("assets").iterdir()}
    named = {a.rsplit("/", 1)[1] for a in assets}
    for script in [a for a in assets if a.endswith(".js")]:  # chunks loaded on demand
        text = root.joinpath(*script.split("/")).read_text()
        named |= {n for n in re.findall(r"[\w-]+\.js", text) if n in built}
    assert built == named  # no stale files from old builds
    assert root.joinpath("preview.html").is_file()  # the builder's preview frame

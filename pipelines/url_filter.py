"""URL blocklists (web input): a page whose URL is listed, or whose host is a listed domain or one of its
subdomains, is removed as `filter:url`. Matched offline: the registered domain comes from tldextract's
bundled public-suffix snapshot (never fetched), so a listed `example.co.uk` blocks `a.example.co.uk`
and a listed `co.uk` blocks nothing beyond itself."""

from __future__ import annotations

from functools import cached_property
from urllib.parse import urlsplit

import fsspec

from raylm.core.io import text_lines
from raylm.pipelines.stage import Chunk, Step


def read_list(path: str) -> list[str]:
    """The entries of a list file: one a line, `#` starts a comment, blank lines ignored; UTF-8 (a line that is not
    is a RecordError naming it)."""
    with fsspec.open(path, "rb") as f:
        return [e for _, line in text_lines(f) if (e := line.split("#", 1)[0].strip())]


class Blocklist:
    def __init__(self, domains: list[str], urls: list[str]):
        self.domains = {d.lower().lstrip("*.").rstrip(".") for d in domains}
        self.urls = set(urls)

    @cached_property
    def _extract(self):
        import tldextract

        return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # the snapshot in the package only

    def blocks(self, url: str) -> bool:
        if url in self.urls:
            return True
        try:
            host = (urlsplit(url).hostname or "").rstrip(".")
        except ValueError:  # a URL Python cannot split (a bad port, brackets): matched as a whole only
            return False
        if not host or not self.domains:
            return False
        top = self._extract(host).top_domain_under_public_suffix  # "" for a host under no known suffix
        parts = host.split(".")
        for i in range(len(parts)):  # the host, then each parent, down to the registered domain (or to the last label)
            cand = ".".join(parts[i:])
            if cand in self.domains:
                return True
            if cand == top:
                return False
        return False


class UrlFilter(Step):
    """Removes web pages on the recipe's blocklists (data.url_filter) before any work is spent on them."""

    name = "url_filter"

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.url_filter.enabled

    def __init__(self, cfg):
        super().__init__(cfg)
        u = cfg.url_filter
        self.list = Blocklist([d for p in u.block_domains for d in read_list(p)], [x for p in u.block_urls for x in read_list(p)])

    def __call__(self, chunk: Chunk) -> None:
        urls = chunk.block.urls
        chunk.drop(["filter:url" if urls[i] is not None and self.list.blocks(urls[i]) else None for i in chunk.rows])

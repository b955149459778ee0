"""mkdocs hook: links from a docs page to a repository file outside docs/.

The pages are read in two places: in the repository, where a relative link such as
`[table](../benchmarks/results/trace_cpu_v2/compare.md)` opens the file, and on the built site, which holds
only docs/. Here every such link is checked against the repository tree (a missing file is a warning, so
`mkdocs build --strict` fails) and then shown on the site as the file's path in code font instead of a dead
link. Links between docs pages, and their anchors, are left to mkdocs' own validation.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.repo_links")

LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _rewrite(line: str, page_dir: str, repo: Path, src_uri: str) -> str:
    def replace(match: re.Match) -> str:
        text, url = match.group(1), match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", url) or url.startswith(("#", "/")):
            return match.group(0)
        path = posixpath.normpath(posixpath.join(page_dir, url.split("#", 1)[0]))
        if not path.startswith("../"):
            return match.group(0)  # a docs page: mkdocs checks it
        target = path[3:]
        if target.startswith("../") or not (repo / target).exists():
            log.warning("Doc file '%s' links to '%s', which is not a file of the repository", src_uri, url)
            return match.group(0)
        return text if target in text else f"{text} (`{target}`)"

    return LINK.sub(replace, line)


def on_page_markdown(markdown: str, page, config, files) -> str:
    repo = Path(config["docs_dir"]).resolve().parent
    page_dir = posixpath.dirname(page.file.src_uri)
    out, in_fence = [], False
    for line in markdown.split("\n"):
        if FENCE.match(line):
            in_fence = not in_fence
        out.append(line if in_fence else _rewrite(line, page_dir, repo, page.file.src_uri))
    return "\n".join(out)

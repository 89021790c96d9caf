#!/usr/bin/env python3
"""The documentation site without Quarto: every notebook under nbs/ (recursively) becomes one HTML page with
nbconvert's `lab` template (figures embedded as base64), at the same relative path under the output folder;
nbs/index.ipynb becomes index.html. Each page gets a sidebar listing every page, in the reading order and groups of
index.ipynb's links (notebooks it does not link come last, under "More"), and its links to other notebooks
(`[text](01_growth.ipynb#anchor)`) point at their pages.

    .venv/bin/python .ci/docs.py            # into _docs/ (make docs)
    .venv/bin/python .ci/docs.py OUT [--only 00_resnet.ipynb ...]

A script beside check-sync, not a module of incres: it is a development tool (nbconvert is a dev dependency, not a
runtime one), and incres/ is exported from notebooks and installed by `pip install .`.
"""
from __future__ import annotations

import argparse
import html
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
INDEX = 'index.ipynb'
OTHER = 'More'

NAV_CSS = """<style>
.incres-nav{position:fixed;top:0;left:0;bottom:0;width:16rem;overflow-y:auto;box-sizing:border-box;padding:1rem;
  background:#f6f7f9;border-right:1px solid #ddd;font:14px/1.35 system-ui,sans-serif;z-index:10}
.incres-nav .home{display:block;font-size:1.2rem;font-weight:600;margin-bottom:.5rem}
.incres-nav h2{font-size:.75rem;text-transform:uppercase;letter-spacing:.04em;color:#666;margin:1rem 0 .25rem}
.incres-nav a{display:block;padding:.12rem 0;color:#1a5fb4;text-decoration:none}
.incres-nav a:hover{text-decoration:underline}
.incres-nav a[aria-current=page]{color:#000;font-weight:600}
body.jp-Notebook{margin-left:16rem}
@media (max-width:800px){.incres-nav{position:static;width:auto;border:0}body.jp-Notebook{margin-left:0}}
</style>"""


def notebooks(nbs: Path = NBS) -> list[Path]:
    "Every notebook under `nbs` (relative paths), skipping checkpoints and names starting with `.` or `_` (nbdev)."
    return sorted(p.relative_to(nbs) for p in nbs.rglob('*.ipynb')
                  if not any(part.startswith(('.', '_')) for part in p.relative_to(nbs).parts))


def title_of(nb) -> str | None:
    "The first `# heading` of the notebook's first markdown cell."
    for cell in nb.cells:
        if cell.cell_type == 'markdown':
            m = re.search(r'^#\s+(.+)$', cell.source, re.M)
            return m.group(1).strip() if m else None
    return None


LINK = re.compile(r'\[([^\]]+)\]\(([^)\s#]+\.ipynb)(?:#[^)\s]*)?\)')


def reading_order(index_nb, pages: list[Path]) -> list[tuple[str, str, Path]]:
    "`(group, label, notebook)` for every page: index.ipynb's links in order, grouped under its last heading."
    order, seen, group = [], set(), None
    for cell in (index_nb.cells if index_nb is not None else []):
        if cell.cell_type != 'markdown': continue
        for line in cell.source.splitlines():
            heading = re.match(r'^#{2,4}\s+(.+)$', line)
            if heading: group = heading.group(1).strip()
            for label, target in LINK.findall(line):
                path = Path(os.path.normpath(target))
                if path in pages and path not in seen:
                    order.append((group or OTHER, label, path)); seen.add(path)
    return order + [(OTHER, str(p.with_suffix('')), p) for p in pages if p not in seen and p.name != INDEX]


def _label_html(label: str) -> str:
    return re.sub(r'`([^`]+)`', r'<code>\1</code>', html.escape(label))


def nav_html(order, here: Path, site_title: str) -> str:
    "The sidebar for the page of notebook `here`: relative links to every page, the current one marked."
    def href(p: Path) -> str: return Path(os.path.relpath(p.with_suffix('.html'), here.parent)).as_posix()
    home = ' aria-current="page"' if here == Path(INDEX) else ''
    parts = [f'<nav class="incres-nav" aria-label="notebooks"><a class="home" href="{href(Path(INDEX))}"{home}>'
             f'{html.escape(site_title)}</a>']
    group = None
    for g, label, p in order:
        if g != group: parts.append(f'<h2>{html.escape(g)}</h2>'); group = g
        current = ' aria-current="page"' if p == here else ''
        parts.append(f'<a href="{html.escape(href(p))}"{current}>{_label_html(label)}</a>')
    return '\n'.join(parts + ['</nav>'])


HREF = re.compile(r'(href=")([^"#?:]+\.ipynb)((?:#[^"]*)?")')


def relink(body: str, here: Path, pages: set[Path]) -> str:
    "Point relative links to notebooks that are rendered at their pages (`x.ipynb#a` -> `x.html#a`)."
    def sub(m):
        target = Path(os.path.normpath(here.parent/m.group(2)))
        return m.group(1) + m.group(2)[:-len('.ipynb')] + '.html' + m.group(3) if target in pages else m.group(0)
    return HREF.sub(sub, body)


DIRECTIVE = re.compile(r'^#\|\s*([\w-]+)')


def for_reading(nb):
    "As nbdev's docs show it: cells flagged `#| hide` and `#| default_exp` left out, `#|` lines dropped from the rest."
    cells = []
    for cell in nb.cells:
        if cell.cell_type == 'code':
            lines = cell.source.splitlines()
            n = next((i for i, line in enumerate(lines) if not DIRECTIVE.match(line)), len(lines))
            if {DIRECTIVE.match(line).group(1) for line in lines[:n]} & {'hide', 'default_exp'}: continue
            cell.source = '\n'.join(lines[n:])
        cells.append(cell)
    nb.cells = cells
    return nb


def render(nbs: Path, rel: Path, order, pages: set[Path], site_title: str, exporter) -> str:
    "The HTML page of notebook `nbs/rel`."
    import nbformat
    nb = for_reading(nbformat.read(nbs/rel, as_version=4))
    title = title_of(nb) or rel.stem
    body, _ = exporter.from_notebook_node(nb, resources={'metadata': {'name': title, 'path': str((nbs/rel).parent)}})
    page_title = site_title if rel == Path(INDEX) else f'{title} · {site_title}'
    body = re.sub(r'<title>.*?</title>', lambda _: f'<title>{html.escape(page_title)}</title>', body, count=1,
                  flags=re.S)
    body = body.replace('</head>', NAV_CSS + '\n</head>', 1)
    body = re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + '\n' + nav_html(order, rel, site_title), body, count=1)
    return relink(body, rel, pages)


def build(out, nbs: Path = NBS, only=None, site_title: str = 'incres', log=print) -> list[Path]:
    "Render the site into `out` (every notebook, or those named in `only` plus index.ipynb); returns the pages."
    import nbformat
    from nbconvert import HTMLExporter
    out, nbs = Path(out), Path(nbs)
    pages = notebooks(nbs)
    if not pages: raise FileNotFoundError(f'no notebooks under {nbs}')
    index_nb = nbformat.read(nbs/INDEX, as_version=4) if (nbs/INDEX).exists() else None
    order = reading_order(index_nb, pages)
    chosen = pages if only is None else [p for p in pages if p.name == INDEX or p in set(map(Path, only))]
    exporter, written = HTMLExporter(template_name='lab', exclude_input_prompt=True, exclude_output_prompt=True), []
    for rel in chosen:
        start = time.perf_counter()
        html_path = out/rel.with_suffix('.html')
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(render(nbs, rel, order, set(pages), site_title, exporter), encoding='utf-8')
        written.append(html_path)
        if log: log(f'{rel} -> {html_path} ({time.perf_counter() - start:.1f} s)')
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out', nargs='?', default=str(ROOT/'_docs'), help='output folder (default: _docs)')
    parser.add_argument('--nbs', default=str(NBS), help='notebook folder (default: nbs)')
    parser.add_argument('--only', nargs='+', metavar='NOTEBOOK', help='render only these (paths relative to --nbs)')
    args = parser.parse_args(argv)
    pages = build(args.out, Path(args.nbs), args.only)
    index = Path(args.out)/'index.html'
    print(f'{len(pages)} pages; open {index.resolve().as_uri() if index.exists() else args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

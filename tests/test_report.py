"""The HTML report in a real browser: headless Chromium loads the index page and every figure decodes."""
from pathlib import Path

import pytest

from incres.report import check_in_browser, find_chromium, write_report
from incres.testing import fake_report_section

ROOT = Path(__file__).resolve().parents[1]
needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason='headless Chromium not installed (apt-get install -y chromium)')


@needs_chromium
def test_report_images_load_and_a_broken_one_is_caught(tmp_path):
    fake_report_section(tmp_path/'reports'/'cifar10', {n: f'caption of {n}' for n in ('pareto', 'accuracy_vs_compute')})
    index = write_report(tmp_path/'reports')
    shot = tmp_path/'shot.png'
    assert check_in_browser(index, screenshot=shot) == (2, 2)
    assert shot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and shot.stat().st_size > 5000
    (tmp_path/'reports'/'cifar10'/'pareto.png').write_bytes(b'not an image')
    assert check_in_browser(index) == (1, 2)


@needs_chromium
def test_committed_report_renders_every_figure(tmp_path):
    index = ROOT/'reports'/'html'/'index.html'
    if not index.exists(): pytest.skip('no committed report yet (make repro)')
    figures = [p for d in (ROOT/'reports').iterdir() if d.is_dir() and d.name != 'html' for p in d.glob('*.png')]
    loaded, total = check_in_browser(index, screenshot=tmp_path/'report.png')
    assert total == len(figures) > 0 and loaded == total

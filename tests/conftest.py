"""Suite-wide rule: an import error fails, it never turns into a skip.

``pytest.importorskip`` (in a test or at module level) would hide a broken import as a skip; here its
skip becomes a failure that names the module. A test that needs an optional extra must say so with an
explicit ``pytest.mark.skipif`` and reason instead.
"""

from __future__ import annotations

import pytest

IMPORT_SKIP = "could not import"


def _hidden_import_error(report) -> bool:
    return report.skipped and IMPORT_SKIP in str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _hidden_import_error(report):
        report.outcome = "failed"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _hidden_import_error(report):
        report.outcome = "failed"

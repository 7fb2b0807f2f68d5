"""The matrix_full marker: cells of the conformance matrix outside its fast slice.

Registered here; deselected unless the -m expression names it, so `make test` (pytest -q tests)
runs the fast slice only and `make test-matrix` runs every cell.
"""


def pytest_configure(config):
    config.addinivalue_line("markers", "matrix_full: a conformance-matrix cell outside the fast slice "
                                       "(deselected unless -m names matrix_full; make test-matrix)")


def pytest_collection_modifyitems(config, items):
    if "matrix_full" in (config.option.markexpr or ""):
        return
    full = [item for item in items if item.get_closest_marker("matrix_full")]
    if full:
        config.hook.pytest_deselected(items=full)
        items[:] = [item for item in items if not item.get_closest_marker("matrix_full")]

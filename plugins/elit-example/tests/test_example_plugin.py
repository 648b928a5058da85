"""The example plugin passes elit's conformance kit and is found through its entry point."""

import numpy as np

from elit.testing import check_stage
from elit_example import MedianAgreementSelector


def test_conformance():
    check_stage(MedianAgreementSelector)


def test_keeps_member_closest_to_median():
    rng = np.random.default_rng(0)
    base = rng.random((1, 2, 1, 16, 16)).astype(np.float32)
    preds = np.repeat(base, 4, axis=0)
    preds[0] += 0.5  # an outlier member
    preds[1] += 0.01
    sel = MedianAgreementSelector(k=2).select(preds, np.zeros((2, 16, 16)), 0.2)
    assert 0 not in sel.members
    assert len(sel.members) == 2


def test_registered_through_entry_point():
    from elit.plugins import make_plugin_manager
    from elit.registry import Registry

    reg = Registry.from_plugin_manager(make_plugin_manager(autoload=True))
    entry = reg.entry("selector", "median-agreement")
    assert entry.plugin == "example"
    assert entry.package == "elit-example"

"""The recommendation rule on a crafted series of checkpoints (made-up metrics)."""

from __future__ import annotations

from finetune.report.recommend import Scored, recommend


def m(name, step, loss, style=0.3, replay=0.0, leaks=0):
    return Scored(name, step, loss, style, replay, leaks)


def test_lowest_loss_among_those_that_do_not_memorise_more_than_the_last_good_one():
    series = [
        m("base", 0, 3.0, replay=0.0),
        m("checkpoint-10", 10, 2.0, replay=0.05),  # first trained: eligible
        m("checkpoint-20", 20, 1.5, replay=0.05),  # replay flat: eligible, lowest loss so far
        m("checkpoint-30", 30, 1.2, replay=0.20),  # replay rises: out, despite the lower loss
        m("checkpoint-40", 40, 1.6, replay=0.05, leaks=1),  # replay back to checkpoint-20's, but leaks rise: out
        m("final", 50, 1.7, replay=0.05, leaks=0),  # no more than checkpoint-20: eligible, but a higher loss
    ]
    chosen = recommend(series)
    assert chosen["name"] == "checkpoint-20"
    assert "1.5000" in chosen["reason"]
    assert "checkpoint-30 replays more than checkpoint-20 (20% > 5%)" in chosen["reason"]
    assert "checkpoint-40" not in chosen["reason"]  # passed over, but its loss was not lower


def test_ties_go_to_the_lower_style_distance_then_the_earlier_step():
    series = [m("checkpoint-1", 1, 1.0, style=0.4), m("checkpoint-2", 2, 1.0, style=0.2),
              m("checkpoint-3", 3, 1.0, style=0.2)]
    assert recommend(series)["name"] == "checkpoint-2"


def test_order_is_by_step_not_by_listing():
    series = [m("final", 30, 1.0, replay=0.5), m("checkpoint-20", 20, 1.1, replay=0.1), m("base", 0, 4.0)]
    assert recommend(series)["name"] == "checkpoint-20"  # final replays more than checkpoint-20


def test_only_the_base():
    assert recommend([m("base", 0, 3.0)])["name"] == "base"


def test_keeping_a_risen_level_is_no_excuse():
    series = [m("checkpoint-10", 10, 2.0, replay=0.0), m("checkpoint-20", 20, 1.0, replay=0.5, leaks=3),
              m("final", 20, 0.9, replay=0.5, leaks=3)]  # final = checkpoint-20's weights: as bad
    chosen = recommend(series)
    assert chosen["name"] == "checkpoint-10"
    assert "final replays more than checkpoint-10 (50% > 0%)" in chosen["reason"]

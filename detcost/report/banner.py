"""The one banner a run gets where it cannot judge speed: why (the recommendation's speed
caveat, from the prices' decisions) and what to run instead, which follows from how this
run was made: the rounds --decide estimated, the --max-repeats cap that stopped --decide
or --precision (and the flag that lifts it), or, for a plain run, the rounds that would
judge it. The terminal, the HTML report and the Markdown summary all print this text.
"""

from __future__ import annotations

from detcost.derive.recommend import Recommendation

BANNER_HEAD = "This run cannot judge speed"


def advice(rec: Recommendation, ran: dict | None = None) -> str:
    """What would let a run like this one judge speed. `ran` is how the sweep added rounds,
    where it did (`decide`: --decide's `sweep.DecideReport`; `precision`: --precision's
    `sweep.PrecisionReport`), else None."""
    need = rec.rounds_to_judge
    ran = ran or {}
    decide, precision = ran.get("decide"), ran.get("precision")
    if need is None:
        return ("more rounds alone would not settle it at this spread: run on a quiet machine (detcost waits for one "
                "unless --allow-busy), and with the A/A control (no --no-aa)")  # fmt: skip
    if decide and decide.stopped_by:
        return (f"--decide stopped at {decide.rounds} rounds ({decide.stopped_by}); about {need} rounds in all "
                f"would judge it: rerun with --resume --decide --max-repeats {need}")  # fmt: skip
    if precision and precision.stopped_by:
        return (f"--precision stopped at {precision.rounds} rounds ({precision.stopped_by}); about {need} rounds "
                f"in all would judge it: rerun with --resume --decide --max-repeats {need}, which adds rounds only to "
                "the prices still open")  # fmt: skip
    return (f"about {need} rounds in all would judge it: rerun with --resume --decide --max-repeats {max(need, 20)} "
            f"(rounds only for the prices still open), or --repeats {need}")  # fmt: skip


def banner(rec: Recommendation, ran: dict | None = None) -> str | None:
    """The banner, one paragraph, or None where the run can judge speed."""
    if not rec.speed_caveat:
        return None
    return (f"{BANNER_HEAD}: {rec.speed_caveat}. The recommendation rests on reproducibility alone; read every "
            f"price as unconfirmed. To judge speed: {advice(rec, ran)}.")  # fmt: skip

"""What differs between repeats of a trial: a new seed per repeat for the purposes the
`vary` axis names (the kernels alone by default: same seed, fresh processes)."""

from __future__ import annotations

from detcost.axes.registry import Axis

VARY_MODES = ("impl", "init", "data", "all")


class Vary(Axis):
    """What differs between repeats: a new seed per repeat for the purposes it names."""

    def id_part(self, value):
        return None if value == "impl" else f"vary-{value}"

    def varies_seed(self, value, purpose):
        return value in ("all", purpose)


VARY = Vary(
    name="vary",
    default="impl",
    values=VARY_MODES,
    help="what differs between repeats, comma list: impl (only the kernels: same seed, fresh processes; "
    "default), init (initialisation), data (data order and samples), all",
)

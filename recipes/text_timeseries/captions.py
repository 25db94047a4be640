"""Captions: :func:`describe` writes properties as English in varied templates (synonyms, clause
order, openings); :func:`parse` reads them back from any text written in that vocabulary (a
caption the model generated). Every phrase names exactly one value of one property, so a parse
is exact or missing — never a guess.

    describe(Properties("rising", 12, "low", "spike@end"), rng)
    → "The series climbs, with a cycle every 12 steps, little noise and a sharp spike near the end."
"""

from __future__ import annotations

import random
import re

from .properties import PROPERTIES, Properties

TREND = {
    "rising": ("rises steadily", "climbs", "trends upward", "goes up over time", "increases"),
    "falling": ("falls steadily", "declines", "trends downward", "goes down over time", "decreases"),
    "flat": ("stays flat", "has no trend", "holds steady", "stays level overall"),
}
SEASON_NONE = ("no cycle", "no seasonality", "no repeating pattern")
SEASON = ("a cycle every {p} steps", "a period of {p} steps", "a {p}-step cycle", "a pattern repeating every {p} steps")
NOISE = {  # what describe writes
    "low": ("little noise", "a smooth shape", "clean values"),
    "high": ("heavy noise", "a noisy, jagged shape", "lots of noise"),
}
NOISE_WORDS = {  # what parse reads
    "low": ("little noise", "smooth", "clean"),
    "high": ("heavy noise", "noisy", "jagged", "lots of noise"),
}
EVENT_NONE = ("no events", "nothing unusual", "no spikes or shifts")
EVENT = {
    "spike": ("a spike", "a sharp spike", "a one-step outlier"),
    "shift": ("a level shift", "a step change", "a sudden shift in level"),
}
WHERE = {
    "start": ("near the start", "early on", "at the beginning"),
    "middle": ("in the middle", "midway", "halfway through"),
    "end": ("near the end", "late in the window", "toward the end"),
}
OPENINGS = ("The series", "This series", "A series that", "It")


def describe(p: Properties, rng: random.Random) -> str:
    """A caption of ``p``: the trend as the verb, the other three properties as a list in a random
    order, each in a random synonym."""
    season = rng.choice(SEASON).format(p=p.season) if p.season else rng.choice(SEASON_NONE)
    noise = rng.choice(NOISE[p.noise])
    event = (rng.choice(EVENT_NONE) if p.event == "none"
             else f"{rng.choice(EVENT[p.event_kind])} {rng.choice(WHERE[p.event_where])}")
    rest = [season, noise, event]
    rng.shuffle(rest)
    listed = f"{rest[0]}, {rest[1]} and {rest[2]}"
    trend = rng.choice(TREND[p.trend])
    if rng.random() < 0.5:
        return f"{rng.choice(OPENINGS)} {trend}, with {listed}."
    return f"{listed[0].upper()}{listed[1:]}; it {trend}."


_PERIOD = re.compile(r"every (\d+) steps|period of (\d+) steps|(\d+)-step cycle")


def _found(text: str, phrases) -> bool:
    return any(re.search(rf"\b{re.escape(ph)}\b", text) for ph in phrases)


def _one(values: set):
    return next(iter(values)) if len(values) == 1 else None


def parse(text: str) -> dict:
    """The properties a text states, as ``{property: value}``; a property stated not at all or
    with conflicting values is left out (a caller counts it wrong).

    Raises:
        ValueError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise ValueError(f"a caption must be a string, got {type(text).__name__}")
    t = text.lower()
    out: dict = {}
    trend = _one({v for v, phrases in TREND.items() if _found(t, phrases)})
    if trend is not None:
        out["trend"] = trend
    periods = {int(next(g for g in m.groups() if g)) for m in _PERIOD.finditer(t)}
    if _found(t, SEASON_NONE):
        periods.add(0)
    if _one(periods) is not None:
        out["season"] = _one(periods)
    noise = _one({v for v, phrases in NOISE_WORDS.items() if _found(t, phrases)})
    if noise is not None:
        out["noise"] = noise
    if _found(t, EVENT_NONE):
        kinds = {"none"} | {k for k, phrases in EVENT.items() if _found(t.replace("spikes or shifts", ""), phrases)}
        if kinds == {"none"}:
            out["event"] = "none"
    else:
        kind = _one({k for k, phrases in EVENT.items() if _found(t, phrases)})
        where = _one({w for w, phrases in WHERE.items() if _found(t, phrases)})
        if kind is not None and where is not None:
            out["event"] = f"{kind}@{where}"
    return out


def parsed_properties(text: str) -> Properties | None:
    """:func:`parse` as :class:`Properties` when the text states all four, else None."""
    got = parse(text)
    return Properties(**got) if all(name in got for name in PROPERTIES) else None



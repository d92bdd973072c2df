"""How vectors are inverted, as one value.

A `Search` is a small frozen dataclass: how many correction steps, how many hypotheses the sequence beam keeps and
how many candidates each proposes (the token beam), how hypotheses are ranked (the language prior), what runs
after the last step (token swaps), and when an example stops. `api.Vec2Text.invert(vectors, search)` runs any of
them; `v2t demo`, `v2t invert` and `v2t audit` build one from their flags (`from_flags`), say it in their reports
(`describe`) and record it with the rows they write, so a resumed run continues only the same search (`record`).
It is hashable: the compiled program is one per (search, batch shape).

    from v2t_jax import api
    from v2t_jax.search import strategies

    model = api.load_model()
    model.invert(vectors, strategies.inverter_only())        # the inverter's hypothesis alone
    model.invert(vectors, strategies.greedy(20))             # 20 correction steps, the best hypothesis kept
    model.invert(vectors, strategies.sequence_beam(20, 4))   # ... the 4 best kept (vec2text's sbeam)
    model.invert(vectors, strategies.default())              # the commands' search: 2 kept of 2 x 8 candidates
    model.invert(vectors, strategies.sequence_beam(20, 4).replace(prior=0.1, polish=4))

Every number is checked when the value is made (`StrategyError`, one line); what a search needs of a model (a
corrector, gradients for token swaps) is checked against the model before any work (`Search.check_model`).
Adding a piece to the search is a field here (checked, described and recorded with the others) and its part of
the step in `search/core.py` (the drivers receive the whole value). Stdlib only, so `v2t --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import math

from v2t_jax.errors import ModelError

# `v2t invert` / `v2t demo` / `v2t audit` defaults with a corrector: 20 correction steps, each keeping the
# DEFAULT_SBEAM best of the DEFAULT_TOKEN_BEAM candidates the corrector proposes from each hypothesis (docs/search.md,
# "Search: the token beam": more text than vec2text's sbeam 4 in less time); experiments/results/table1_minilm.md and
# search_budget.md show what the sequence beam adds, and search_prior_test.md / search_polish_test.md that the
# prior and token swaps add nothing measurable yet. A `Search` made in code defaults to greedy (DEFAULT_BEAM).
DEFAULT_STEPS = 20
DEFAULT_BEAM = 1
DEFAULT_SBEAM = 2
DEFAULT_TOKEN_BEAM = 8
DEFAULT_PRIOR = 0.0  # the language prior's weight: 0 ranks hypotheses by cosine alone, as vec2text
DEFAULT_POLISH = 0  # rounds of gradient-guided token swaps after the search (v2t_jax/search/hotflip.py); 0: none
# the commands' default stop: an example stops after 3 correction steps in a row without a better hypothesis. On 500
# held-out passages it keeps BLEU (10.69 -> 10.71) in 2.1x less time; out of domain and at sbeam 4 BLEU falls
# by <= 0.08 in 2.1-2.2x less time (experiments/results/patience_*.md). `Search` itself defaults to 0 (off).
DEFAULT_PATIENCE = 3

MAX_BEAM = 64  # 4,096 candidates per vector and step; the paper's widest is 8 (64)
MAX_STEPS = 10_000  # correction steps (a step count is an int32 inside the compiled loop; the paper runs 50)
MAX_PRIOR = 100.0  # the language prior's weight: far past where the cosine still counts
MAX_POLISH = 100  # rounds of token swaps (each changes at most one token)
NO_STOP = 2.0  # a stop cosine no example reaches (cosines are at most 1)


class StrategyError(ModelError):
    """A search that cannot run (a number out of range, or a piece the model cannot do); one line."""


def parse_widths(text: str) -> tuple[int, int | None]:
    """A search's widths as written everywhere (`v2t bench --beam`, the results table's rows, run names): "B"
    (vec2text's search: B hypotheses kept, token beams of B) or "BxW" (B kept of the candidates W-wide token
    beams propose from each) -> (B, W or None). StrategyError for anything else; the widths' limits are
    `Search`'s."""
    b, x, w = str(text).strip().partition("x")
    if not b.isdigit() or (x and not w.isdigit()):
        raise StrategyError(f"a search's widths are B or BxW (sequence beam x token beam, e.g. 4 or 2x8), got {text!r}")
    return int(b), (int(w) if x else None)


def widths_label(beam: int, token_beam: int | None) -> str:
    """(B, W) as `parse_widths` reads it: "4" for vec2text's search (no token beam, or W = B), "2x8" otherwise."""
    return f"{beam}" if token_beam in (None, 0, beam) else f"{beam}x{token_beam}"


def check_prior(prior) -> float:
    """The language prior's weight as a float in [0, MAX_PRIOR]."""
    try:
        value = float(prior)
    except (TypeError, ValueError):
        raise StrategyError(f"prior must be a number, got {prior!r}") from None
    if not 0.0 <= value <= MAX_PRIOR:  # NaN fails too
        raise StrategyError(f"prior must be in [0, {MAX_PRIOR:g}] (0: cosine alone), got {prior!r}")
    return value


def _whole(value, name: str, low: int, high: int | None = None, hint: str = "") -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise StrategyError(f"{name} must be a whole number, got {value!r}")
    value = int(value.__index__())
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise StrategyError(f"{name} must be {bound}{hint}, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class Search:
    """An inversion's search (see the module docstring).

    steps: correction steps after the inverter's hypothesis (0: the inverter alone).
    beam: hypotheses kept per step (the sequence beam; 1: greedy). A step decodes beam × token_beam candidates
        per vector, re-embeds them and keeps the `beam` best.
    token_beam: the corrector's token beam search width from each hypothesis: how many candidates it proposes
        (None: `beam`, as vec2text couples them, beam² candidates; at least `beam`). A narrow sequence beam with
        a wide token beam (beam 2, token_beam 8) recovers more text than beam 4 at the same work. With 0 steps it
        is the inverter's: its token beam's candidates are re-embedded and the best by cosine kept (None or 1:
        its greedy decode); `beam` plays no part there.
    prior: the language prior's weight λ: hypotheses are ranked by cosine + λ · their mean log-probability under
        the corrector (`drivers.invert`); 0 ranks by cosine alone, as vec2text does. (Token swaps rank by
        cosine + λ · the inverter's log-probability, so it counts at 0 steps with `polish` too.)
    polish: rounds of gradient-guided token swaps on each result (`v2t_jax.search.hotflip`): each round re-embeds the
        most promising single-token swaps and keeps one only if it raises the score.
    stop_cosine: an example stops once its best cosine reaches this (None: never).
    skip_repeated: an example stops once a step returns its hypotheses unchanged (a fixed point) or as they were
        two steps before (a 2-cycle), and duplicate candidates are embedded once; the texts are the full loop's
        up to floating-point rounding. False runs every step for every example. With it `invert` runs as a
        stream (continuous batching: a finished example's slot takes the next vector).
    patience: k > 0 also stops an example once k correction steps in a row have not improved its best: less
        time for a little fidelity (0: off, the default of a `Search`; the commands' is DEFAULT_PATIENCE, see
        `default`). Unlike a fixed point it changes the texts.
    """

    steps: int = 0
    beam: int = DEFAULT_BEAM
    prior: float = DEFAULT_PRIOR
    polish: int = DEFAULT_POLISH
    stop_cosine: float | None = None
    skip_repeated: bool = True
    patience: int = 0
    token_beam: int | None = None

    def __post_init__(self):
        set_ = object.__setattr__  # (frozen: each field is stored in its checked form)
        set_(self, "steps", _whole(self.steps, "steps", 0, MAX_STEPS, " (the paper runs 50)"))
        set_(
            self, "beam",
            _whole(self.beam, "the sequence beam width", 1, MAX_BEAM,
                   f" (a step decodes and re-embeds width² candidates per vector: {MAX_BEAM ** 2:,} at "
                   f"{MAX_BEAM}; the paper uses 8)"),
        )  # fmt: skip
        set_(self, "prior", check_prior(self.prior))
        set_(self, "polish", _whole(self.polish, "polish (rounds of token swaps)", 0, MAX_POLISH))
        if self.stop_cosine is not None:
            try:
                stop = float(self.stop_cosine)
            except (TypeError, ValueError):
                raise StrategyError(f"stop_cosine must be a number, got {self.stop_cosine!r}") from None
            if math.isnan(stop):
                raise StrategyError("stop_cosine must be a number, got nan")
            set_(self, "stop_cosine", stop)
        set_(self, "skip_repeated", bool(self.skip_repeated))
        set_(self, "patience", _whole(self.patience, "patience", 0, MAX_STEPS, " (0: off)"))
        if self.token_beam is not None and self.steps:
            set_(
                self, "token_beam",
                _whole(self.token_beam, "the token beam width", self.beam, MAX_BEAM,
                       f" (at least the sequence beam width {self.beam}: a step from one hypothesis must fill it)"),
            )  # fmt: skip
            if self.token_beam == self.beam:
                set_(self, "token_beam", None)  # the coupled search (one value, one compiled program)
        elif self.token_beam is not None:  # the inverter's beam: no sequence beam to fill at 0 steps
            set_(self, "token_beam", _whole(self.token_beam, "the token beam width", 1, MAX_BEAM))
            if self.token_beam == 1:
                set_(self, "token_beam", None)  # its greedy decode (one value, one compiled program)

    def replace(self, **changes) -> Search:
        """This search with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    @property
    def stop(self) -> float:
        """The stop cosine the compiled loop reads (NO_STOP: never)."""
        return NO_STOP if self.stop_cosine is None else self.stop_cosine

    @property
    def width(self) -> int:
        """A correction step's token beam: the candidates it proposes from each hypothesis (None given: `beam`)."""
        return self.beam if self.token_beam is None else self.token_beam

    @property
    def inverter_width(self) -> int:
        """The inverter's token beam: `token_beam` at 0 steps, else 1 (step 0 before correction steps is greedy)."""
        return self.token_beam if not self.steps and self.token_beam is not None else 1

    def without_stop(self) -> Search:
        """This search without its stop cosine: what a compiled program is specialised on (the drivers take the
        stop apart, traced, so that one program serves every stop)."""
        return self if self.stop_cosine is None else self.replace(stop_cosine=None)

    def check_model(self, *, has_corrector: bool, in_graph: bool, black_box: bool = False) -> None:
        """Refuses a search the model cannot run: correction steps without a corrector; token swaps without the
        embedder's gradients (a model with its own vocabulary, or a black-box embedder)."""
        if self.steps and not has_corrector:
            raise StrategyError("this model is an inverter only (no corrector): use 0 correction steps")
        if self.polish and not in_graph:
            raise StrategyError("polish (token swaps) needs a model that decodes in the embedder's own vocabulary")
        if self.polish and black_box:
            raise StrategyError("polish (token swaps) needs the embedder's gradients: not with a black-box embedder")

    def describe(self) -> str:
        """What the search does, in a few words ("20 correction steps, sequence beam 4, language prior 0.1")."""
        out = "inverter only" if not self.steps else f"{self.steps} correction steps, sequence beam {self.beam}"
        out += f", token beam {self.token_beam}" if self.token_beam is not None and self.token_beam > 1 else ""
        ranks = self.steps or self.polish or self.token_beam is not None  # (at 0 steps: the inverter's beams)
        out += f", language prior {self.prior:g}" if self.prior and ranks else ""
        out += f", {self.polish} rounds of token swaps" if self.polish else ""
        out += f", stop after {self.patience} steps without a better hypothesis" if self.patience else ""
        return out + (f", stop at cosine {self.stop_cosine:g}" if self.stop_cosine is not None else "")

    def record(self) -> dict:
        """The search as the rows a command writes record it (the `steps`, `sbeam`, ... keys of a run), so that
        a resumed run continues only the same search. `patience` and `token_beam` only when set: runs written
        before they existed resume as they were."""
        out = {
            "steps": self.steps,
            "sbeam": self.beam,
            "prior": self.prior,
            "polish": self.polish,
            # (JSON holds no infinity: -inf, which stops every vector at once, is written as the text "-inf")
            "stop_cosine": self.stop_cosine if _finite(self.stop_cosine) else str(self.stop_cosine),
            "skip_repeated": self.skip_repeated,
        }
        out |= {"patience": self.patience} if self.patience else {}
        return out | ({"token_beam": self.token_beam} if self.token_beam is not None else {})


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def default(has_corrector: bool = True) -> Search:
    """What `v2t invert`, `v2t demo` and `v2t audit` run without search flags (and `audit.run` without a search):
    DEFAULT_STEPS correction steps keeping DEFAULT_SBEAM hypotheses of DEFAULT_TOKEN_BEAM candidates each, an
    example stopping at a fixed point or after DEFAULT_PATIENCE steps without a better hypothesis; the inverter
    alone for a model without a corrector."""
    return from_flags(None, has_corrector=has_corrector)


def inverter_only(**kw) -> Search:
    """The inverter's hypothesis alone (step 0)."""
    return Search(steps=0, **kw)


def greedy(steps: int = DEFAULT_STEPS, **kw) -> Search:
    """`steps` corrections, keeping the best hypothesis each step (vec2text's default search)."""
    return Search(steps=steps, beam=1, **kw)


def sequence_beam(steps: int = DEFAULT_STEPS, width: int = 4, **kw) -> Search:
    """`steps` corrections, keeping the `width` best hypotheses each step (vec2text's `sequence_beam_width`)."""
    return Search(steps=steps, beam=width, **kw)


def resumed_flags(record: dict | None, flags: dict) -> tuple[dict, list[str]]:
    """The search flags of a rerun (`from_flags`' keyword arguments, None where the command line left one out)
    completed from `record`, the state of the interrupted run it continues (`Search.record()` and the run's
    other keys), so that it resumes with the search it started with after a default changed: --sbeam with
    --token-beam (a run from before the default token beam recorded none: its sbeam, vec2text's search) and
    --patience (a run from before the default patience recorded none: 0). Given flags, no record, or a record at
    0 steps (no default changed there) change nothing. Returns (flags, the ones taken, as flags for a message)."""
    flags, taken = dict(flags), []
    if not isinstance(record, dict) or not record.get("steps"):
        return flags, taken
    sbeam, token_beam = record.get("sbeam"), record.get("token_beam", record.get("sbeam"))
    if flags.get("sbeam") is None and isinstance(sbeam, int) and isinstance(token_beam, int):
        flags["sbeam"] = sbeam
        flags["token_beam"] = token_beam if flags.get("token_beam") is None else flags["token_beam"]
        if (sbeam, token_beam) != (DEFAULT_SBEAM, DEFAULT_TOKEN_BEAM):
            taken.append(f"--sbeam {sbeam}" + (f" --token-beam {token_beam}" if token_beam != sbeam else ""))
    patience = record.get("patience", 0)
    skipping = record.get("skip_repeated", True)
    if flags.get("patience") is None and skipping and isinstance(patience, int) and patience >= 0:
        flags["patience"] = patience  # (without skipping from_flags' default is 0 anyway)
        if patience != DEFAULT_PATIENCE:
            taken.append(f"--patience {patience}")
    return flags, taken


def from_flags(
    steps: int | None,
    sbeam: int | None = None,
    prior: float = DEFAULT_PRIOR,
    polish: int = DEFAULT_POLISH,
    stop_cosine: float | None = None,
    skip_repeated: bool = True,
    patience: int | None = None,
    token_beam: int | None = None,
    *,
    has_corrector: bool = True,
) -> Search:
    """The search of a command's flags (--steps, --sbeam, --prior, --polish, --stop-cosine, --no-skip-repeated,
    --patience, --token-beam):
    no --steps is DEFAULT_STEPS with a corrector and 0 without; no --sbeam is DEFAULT_SBEAM, and then no
    --token-beam DEFAULT_TOKEN_BEAM (with --sbeam B it is B, vec2text's sequence beam); no --patience is
    DEFAULT_PATIENCE, except with --no-skip-repeated (every step for every vector: vec2text's loop) or 0 steps,
    where it is 0. At 0 steps there is no sequence beam (1), and the inverter decodes greedily unless
    --token-beam is given. Errors name the flag."""
    if steps is None:
        steps = DEFAULT_STEPS if has_corrector else 0
    if sbeam is None:  # (at 0 steps a given token beam is the inverter's; none: its greedy decode, vec2text's)
        sbeam, token_beam = (
            (DEFAULT_SBEAM, DEFAULT_TOKEN_BEAM if token_beam is None else token_beam) if steps else (1, token_beam)
        )
    if patience is None:
        patience = DEFAULT_PATIENCE if skip_repeated and steps else 0
    try:
        return Search(steps, sbeam, prior, polish, stop_cosine, skip_repeated, patience, token_beam)
    except StrategyError as e:
        raise StrategyError(_as_flag(str(e))) from None


_FLAGS = {
    "steps": "--steps",
    "the sequence beam width": "--sbeam",
    "prior": "--prior",
    "polish (rounds of token swaps)": "--polish",
    "stop_cosine": "--stop-cosine",
    "patience": "--patience",
    "the token beam width": "--token-beam",
}


def _as_flag(message: str) -> str:
    for name, flag in _FLAGS.items():
        if message.startswith(name + " "):
            return flag + message[len(name) :]
    return message


__all__ = [
    "Search",
    "StrategyError",
    "inverter_only",
    "greedy",
    "sequence_beam",
    "from_flags",
    "default",
    "check_prior",
    "DEFAULT_STEPS",
    "DEFAULT_BEAM",
    "DEFAULT_SBEAM",
    "DEFAULT_TOKEN_BEAM",
    "DEFAULT_PRIOR",
    "DEFAULT_POLISH",
    "DEFAULT_PATIENCE",
    "MAX_BEAM",
    "MAX_STEPS",
    "MAX_PRIOR",
    "MAX_POLISH",
]

"""The method registry: name -> MSAMethod subclass (order = leaderboard row order).

Adding a method touches its module, one line here, and one README row.
"""

from __future__ import annotations

import difflib

from methods.base import MethodConfig, MSAMethod
from methods.baseline import Baseline, BaselineSeq
from methods.camib import CaMIB
from methods.clue import Clue
from methods.gear import Gear
from methods.groupdro import OracleGroupDRO
from methods.jtt import JTT
from methods.lff import LfF
from methods.mmci import MMCI
from methods.reweight import OracleReweight
from methods.rubi import Rubi

METHODS: dict[str, type[MSAMethod]] = {
    "baseline": Baseline,
    "baseline_seq": BaselineSeq,
    "gear": Gear,
    "mmci": MMCI,
    "camib": CaMIB,
    "clue": Clue,
    "lff": LfF,
    "rubi": Rubi,
    "jtt": JTT,
    "oracle_groupdro": OracleGroupDRO,
    "oracle_reweight": OracleReweight,
}


def get_method(name: str) -> type[MSAMethod]:
    """The registered class for ``name``, with the list of valid names on a typo."""
    try:
        return METHODS[name]
    except KeyError:
        match = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        raise KeyError(f"unknown method {name!r}{hint}; registered methods: {', '.join(METHODS)}") from None


__all__ = ["METHODS", "MSAMethod", "MethodConfig", "get_method"]

"""The fake's judge: scores for the pairs of a judge request (``masscer.lib.llm.judge``).

By default every pair scores 5 on every criterion. A behaviour ``{"kind": "judge", "low":
"MARKER"}`` scores 1 (or ``"score"``) on every criterion for each pair whose question,
answer or evidence contains MARKER, and 5 for the rest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from masscer.lib.llm.prompts import JUDGE_CRITERIA


def judge_text(behaviour: Mapping[str, Any], pairs: Sequence[Mapping[str, Any]]) -> str:
    marker = behaviour.get("low")
    low = int(behaviour.get("score", 1))
    scores = []
    for position, pair in enumerate(pairs, start=1):
        text = " ".join(str(pair.get(name) or "") for name in ("question", "answer", "evidence"))
        grade = low if marker and str(marker) in text else 5
        entry: dict[str, Any] = {name: grade for name in JUDGE_CRITERIA}
        entry["id"] = pair.get("id", position)
        entry["reasons"] = {name: f"the fake judge gave {grade}" for name in JUDGE_CRITERIA}
        scores.append(entry)
    return json.dumps({"scores": scores})

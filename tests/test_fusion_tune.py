"""The fusion tuning bench scores settings with the product's own rules.

Protects: `bench.fusion_tune.fuse` with reciprocal-rank fusion, equal weights and 20 candidates
orders chunks exactly as knowledge search's `rrf` does, and min-max fusion as its `weighted`
does; a setting's candidate depth cuts each ranking before fusing; a heavier vector weight
moves a vector-only hit above a keyword-only one.
"""

from __future__ import annotations

from bench.fusion_tune import Setting, fuse
from memory.knowledge import Hit, rrf, weighted

VECTOR = [("a", 0.9), ("b", 0.8), ("c", 0.5), ("d", 0.4)]
KEYWORD = [("c", 7.0), ("e", 5.0), ("a", 1.0)]


def _hits(ranking: list[tuple[str, float]]) -> list[Hit]:
    return [Hit(ord(key), key, "doc", value, key=key) for key, value in ranking]


def test_fuse_matches_knowledge_search() -> None:
    assert fuse((VECTOR, KEYWORD), Setting("rrf", 20, 0.5)) == [
        h.key for h in rrf(_hits(VECTOR), _hits(KEYWORD))]
    assert fuse((VECTOR, KEYWORD), Setting("minmax", 20, 0.5)) == [
        h.key for h in weighted(_hits(VECTOR), _hits(KEYWORD))]


def test_candidates_and_weight_change_the_order() -> None:
    assert "d" not in fuse((VECTOR, KEYWORD), Setting("rrf", 3, 0.5))
    order = fuse((VECTOR, KEYWORD), Setting("rrf", 20, 0.8))
    assert order.index("b") < order.index("e")
    order = fuse((VECTOR, KEYWORD), Setting("rrf", 20, 0.2))
    assert order.index("e") < order.index("b")

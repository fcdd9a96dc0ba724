"""Built-in sentiment, a starting point where no user is labelled: each text scored by a
maintained offline package, pooled per user, stored as a derived attribute (`sentiment`, a
number in [-1, 1]) with the user's other attributes, so that filters, segment profiles and
the learned models see it like any other.

    English and other Latin-script texts   VADER (vaderSentiment): the compound score
    texts mostly in CJK characters         snownlp's Bayes model of shopping reviews:
                                           2 p(positive) - 1

A user's score is the weighted mean of the texts' (the texts' own weights). A profile that
carries its own `sentiment` attribute keeps it. Off by default (`EngineConfig.sentiment`);
both packages come with the `sentiment` extra of audience-index.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import replace

from .._errors import ConfigError
from .._types import Profile

SENTIMENT = "sentiment"  # the derived attribute
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
CJK_TEXT = 0.3  # a text with at least this share of CJK characters among its non-spaces


class SentimentScorer:
    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as exc:
            raise ConfigError(
                "sentiment",
                "needs the vaderSentiment and snownlp packages: pip install "
                "'audience-index[sentiment]' (make install does)",
            ) from exc
        self._vader = SentimentIntensityAnalyzer()
        self._snownlp_lock = threading.Lock()  # its models load on first use

    def score(self, text: str) -> float:
        """One text's sentiment in [-1, 1]."""
        letters = [c for c in text if not c.isspace()]
        cjk = sum(1 for c in letters if _CJK.match(c))
        if letters and cjk / len(letters) >= CJK_TEXT:
            with self._snownlp_lock:
                from snownlp import SnowNLP

                return round(2.0 * float(SnowNLP(text).sentiments) - 1.0, 4)
        return round(float(self._vader.polarity_scores(text)["compound"]), 4)

    def annotate(self, profiles: Sequence[Profile]) -> list[Profile]:
        """The profiles with their pooled `sentiment` attribute (those with texts and without
        a sentiment of their own)."""
        out = []
        for p in profiles:
            if not p.texts or SENTIMENT in p.attributes:
                out.append(p)
                continue
            weights = [t.weight for t in p.texts]
            total = sum(weights)
            pooled = sum(w * self.score(t.text) for w, t in zip(weights, p.texts)) / total
            out.append(replace(p, attributes={**p.attributes, SENTIMENT: round(pooled, 4)}))
        return out

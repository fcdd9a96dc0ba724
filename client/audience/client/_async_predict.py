"""The prediction calls of :class:`AsyncAudienceClient` (predicted attributes, interest tags,
fitting the models), a part of the hand-written client kept in a file of its own;
`_sync_predict.py` is generated from it by `scripts/unasync.py` like `_sync.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import _convert as cv
from . import _predictions as pc
from ._channel import Stubs
from ._options import DEFAULT, Timeout
from ._proto import audience_pb2 as pb
from ._types import Job


class AsyncPredictCalls:
    """Mixed into the client, which provides `_live` and `_unary`."""

    _live: Stubs

    async def _unary(self, method: Callable[..., Any], request: Any, timeout: Timeout) -> Any:
        raise NotImplementedError  # the client's own

    async def predict_attributes(
        self,
        user_ids: Sequence[str] = (),
        *,
        profiles: Sequence[Any] = (),
        attributes: Sequence[str] = (),
        tags: Sequence[str] | None = None,
        max_tags: int = 5,
        min_tag_score: float | None = None,
        timeout: Timeout = DEFAULT,
    ) -> list[pc.UserPrediction]:
        """What the fitted models predict for stored users (``user_ids``) and for profiles
        not stored (``profiles``, encoded but not stored), in that order: each attribute's
        value with its confidence beside the stored value. ``attributes``: which (default:
        every fitted one). ``tags``: also zero-shot interest tags against these names ([]:
        the served segments' keywords), at most ``max_tags``, each ``min_tag_score``
        (default 1) standard deviations above an ordinary user."""
        request = pc.predict_request(user_ids, profiles, attributes, tags, max_tags, min_tag_score)
        response = await self._unary(self._live.predictions.PredictAttributes, request, timeout)
        return pc.user_predictions(response)

    async def list_predictors(self, *, timeout: Timeout = DEFAULT) -> list[pc.Predictor]:
        """The fitted models served and their held-out quality."""
        request = pb.ListPredictorsRequest()
        response = await self._unary(self._live.predictions.ListPredictors, request, timeout)
        return pc.predictors(response.predictors)

    async def fit_predictors(
        self, attributes: Sequence[str] = (), *, timeout: Timeout = None
    ) -> pc.FitResult:
        """Fit a model per attribute on the users who have it (default: every stored
        attribute enough users have), save and serve it; waits for the job."""
        request = pc.fit_request(attributes)
        response = await self._unary(self._live.admin.FitPredictors, request, timeout)
        return pc.fit_result(response)

    async def start_fit_predictors(
        self, attributes: Sequence[str] = (), *, timeout: Timeout = DEFAULT
    ) -> Job:
        """:meth:`fit_predictors` as a job, returning at once (see ``wait_job``)."""
        request = pc.fit_request(attributes)
        return cv.job(await self._unary(self._live.admin.StartFitPredictors, request, timeout))

"""Learned attributes: a model per attribute fitted on the users who have it (_fit.py), saved
without pickle (_model.py), served as predicted columns (_predictors.py); zero-shot interest
tags (_tags.py)."""

from ._fit import MAX_FIT_USERS, NotPredictable, fit_attribute, kind_of
from ._model import AttributeModel, Inputs, PredictorDamaged, file_stem, text_features
from ._predictors import (
    PREDICTORS_DIR,
    Answers,
    Loaded,
    answer_all,
    answers,
    load_predictors,
    predict_into,
)
from ._tags import tag_scores, top_tags

__all__ = [
    "MAX_FIT_USERS",
    "PREDICTORS_DIR",
    "Answers",
    "AttributeModel",
    "Inputs",
    "Loaded",
    "NotPredictable",
    "PredictorDamaged",
    "answer_all",
    "answers",
    "file_stem",
    "fit_attribute",
    "kind_of",
    "load_predictors",
    "predict_into",
    "tag_scores",
    "text_features",
    "top_tags",
]

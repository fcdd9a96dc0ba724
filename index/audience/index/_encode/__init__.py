"""Encode: profiles -> user vectors (texts embedded and pooled, the lexical channel,
attributes). A pure step: no store, no server; it runs in batch workers as in the server.

    _encoder.py      ProfileEncoder: the one encode path (what callers use)
    _channels.py     the three channels of a user vector and how they are joined; vocabulary
    _embed.py        TextEmbedder, the sentence-transformers embedder, make_embedder
    _onnx.py         the ONNX Runtime embedder (no torch); export checks
    _onnx_export.py  exporting a model to ONNX (torch, in a child process)
    _lexical.py      the lexical model (TF-IDF + SVD fitted on the stored texts)
    _batch.py        the encoder export and BatchTextEncoder: text vectors in batch workers
"""

from ._batch import BatchTextEncoder, EncoderExport, export_of
from ._channels import Vocabulary, VocabularyDraft
from ._embed import SentenceTransformerEmbedder, TextEmbedder, make_embedder, resolve_model_path
from ._encoder import EncodedProfiles, ProfileEncoder, Reencoded, f32, from_f32, text_items
from ._lexical import LexicalModel, LexicalModelError
from ._onnx import OnnxEmbedder

__all__ = [
    "BatchTextEncoder",
    "EncoderExport",
    "export_of",
    "EncodedProfiles",
    "LexicalModel",
    "LexicalModelError",
    "OnnxEmbedder",
    "ProfileEncoder",
    "Reencoded",
    "SentenceTransformerEmbedder",
    "TextEmbedder",
    "Vocabulary",
    "VocabularyDraft",
    "f32",
    "from_f32",
    "make_embedder",
    "resolve_model_path",
    "text_items",
]

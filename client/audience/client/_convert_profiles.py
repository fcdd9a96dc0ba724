"""Scalars, attributes and profiles to protobuf and back (part of `_convert`, which
re-exports what the clients use)."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ._errors import InvalidArgument
from ._proto import audience_pb2 as pb
from ._types import AttributeScalar, Profile, Text, as_tuple

ProfileLike = Profile | Mapping[str, Any]


# ---------------------------------------------------------------- scalars


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgument(f"{name} must be an int, not {type(value).__name__}")
    return int(value)


def _float(name: str, value: Any) -> float:
    """A number as float; NaN and infinities pass through for the server to judge."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgument(f"{name} must be a number, not {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise InvalidArgument(f"{name} is too large for a float") from None


def string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a str, not {type(value).__name__}")
    return value


def strings(name: str, values: Iterable[str]) -> list[str]:
    """A list of str from any iterable of str (a bare str is refused)."""
    return [string(f"{name} item", v) for v in as_tuple(name, values)]


def _assign(msg: Any, field: str, value: Any, name: str) -> None:
    """Set a protobuf field, turning protobuf's own range/type errors into InvalidArgument."""
    try:
        setattr(msg, field, value)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{name}: {exc}") from None


# ---------------------------------------------------------------- attributes and profiles


def attribute_to_pb(name: str, value: Any) -> pb.AttributeValue:
    """bool -> flag (checked before int: bool is an int), number -> number, str -> text."""
    if isinstance(value, bool):
        return pb.AttributeValue(flag=value)
    if isinstance(value, numbers.Real):
        return pb.AttributeValue(number=_float(f"attribute {name!r}", value))
    if isinstance(value, str):
        try:
            return pb.AttributeValue(text=value)
        except ValueError as exc:
            raise InvalidArgument(f"attribute {name!r}: {exc}") from None
    raise InvalidArgument(
        f"attribute {name!r}: unsupported value type {type(value).__name__} "
        "(use a number, a str or a bool)"
    )


def attribute_from_pb(msg: pb.AttributeValue) -> AttributeScalar | None:
    kind = msg.WhichOneof("kind")
    return None if kind is None else getattr(msg, kind)


def coerce_profile(value: Any) -> Profile:
    """A :class:`Profile` from a Profile or a dict with the same field names."""
    if isinstance(value, Profile):
        return value
    if isinstance(value, Mapping):
        try:
            return Profile(**value)
        except TypeError as exc:
            raise InvalidArgument(f"bad profile fields {sorted(map(str, value))}: {exc}") from None
    raise InvalidArgument(f"a profile must be a Profile or a dict, not {type(value).__name__}")


def text_to_pb(text: Text) -> pb.Text:
    msg = pb.Text(text=string("text", text.text), timestamp=_int("timestamp", text.timestamp))
    if text.weight is not None:
        _assign(msg, "weight", _float("text weight", text.weight), "text weight")
    return msg


def profile_to_pb(value: ProfileLike) -> pb.Profile:
    profile = coerce_profile(value)
    user_id = string("user_id", profile.user_id)
    vector, text_vector = profile.vector, profile.text_vector
    for name, blob in (("vector", vector), ("text_vector", text_vector)):
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise InvalidArgument(
                f"profile {user_id!r}: {name} must be bytes (little-endian float32)"
            )
    try:
        msg = pb.Profile(user_id=user_id, vector=bytes(vector), text_vector=bytes(text_vector))
        msg.texts.extend(text_to_pb(t) for t in profile.texts)
        for name, attr in profile.attributes.items():
            msg.attributes[string("attribute name", name)].CopyFrom(attribute_to_pb(name, attr))
    except ValueError as exc:  # e.g. a str that is not valid UTF-8 (lone surrogates)
        raise InvalidArgument(f"profile {user_id!r}: {exc}") from None
    return msg


def profile_from_pb(msg: pb.Profile) -> Profile:
    texts = tuple(
        Text(t.text, weight=t.weight if t.HasField("weight") else None, timestamp=t.timestamp)
        for t in msg.texts
    )
    attributes = {name: attribute_from_pb(v) for name, v in msg.attributes.items()}
    return Profile(msg.user_id, texts=texts, attributes=attributes, vector=bytes(msg.vector))


def profiles_to_pb(profiles: Iterable[ProfileLike]) -> list[pb.Profile]:
    return [profile_to_pb(p) for p in _profile_iterable(profiles)]


def _profile_iterable(profiles: Any) -> Any:
    if isinstance(profiles, (Profile, Mapping, str, bytes)):
        raise InvalidArgument("profiles must be an iterable of profiles; wrap one in a list")
    return profiles


class Batcher:
    """Groups profiles into protobuf batches of ``batch_size`` as they stream in."""

    def __init__(self, batch_size: int) -> None:
        if _int("batch_size", batch_size) < 1:
            raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self._batch: list[pb.Profile] = []

    def add(self, profile: ProfileLike) -> list[pb.Profile] | None:
        """Add one profile; returns a full batch when one is ready."""
        self._batch.append(profile_to_pb(profile))
        return self.flush() if len(self._batch) >= self.batch_size else None

    def flush(self) -> list[pb.Profile] | None:
        """The pending partial batch, if any."""
        batch, self._batch = self._batch, []
        return batch or None

    def batches(self, profiles: Iterable[ProfileLike]) -> Iterator[list[pb.Profile]]:
        """Lazily batch a (possibly huge) iterable."""
        for profile in _profile_iterable(profiles):
            batch = self.add(profile)
            if batch:
                yield batch
        last = self.flush()
        if last:
            yield last


def upsert_request(batch: list[pb.Profile], text_fingerprint: str = "") -> pb.UpsertUsersRequest:
    return pb.UpsertUsersRequest(profiles=batch, text_fingerprint=text_fingerprint)


def is_async_iterable(value: Any) -> bool:
    return hasattr(value, "__aiter__")


def check_profiles(profiles: Any) -> None:
    """Refuse a single profile given where an iterable of them is expected."""
    _profile_iterable(profiles)

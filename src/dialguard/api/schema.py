"""The bodies and query strings of the HTTP API, read into typed requests. Pure: bytes and
strings in, a request or an ApiError (`bad_json`, `invalid_request`) out, nothing done.

Every field is checked before anything is written: a request the API answers with an
error changed nothing. A field the endpoint does not know is refused rather than ignored
(a misspelt `caller_id` would otherwise be a call decided without its caller ID).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from dialguard import import_files
from dialguard.api.errors import ApiError
from dialguard.changes import MAX_CONTRACT_ID, MAX_PROOF_REF, MAX_SOURCE
from dialguard.model import Sector
from dialguard.service import OutcomeKind

__all__ = [
    "ConsentBody",
    "ContractBody",
    "ContractEndBody",
    "DecisionBody",
    "OutcomeBody",
    "WithdrawalBody",
    "explain_flag",
    "parse_json",
    "reason_of",
]

# A number as anyone writes it, with spaces and a prefix; a campaign or principal name.
NUMBER_CHARS = 64
NAME_CHARS = 64
# Asterisk's channel names and unique ids are far shorter; a CRM's call ids too.
CHANNEL_CHARS = 128
# A change dated ahead of the clock is a typo (or a lie): a few minutes of clock skew
# between the CRM and this node are allowed, as on the command line.
FUTURE_SLACK = timedelta(minutes=5)


def parse_json(raw: bytes, *, empty_ok: bool = False) -> dict[str, Any]:
    """The body as a JSON object; an empty body is {} where `empty_ok`."""
    if not raw.strip():
        if empty_ok:
            return {}
        raise ApiError("bad_json", "the body is empty: send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError("bad_json", f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError("bad_json", f"the body must be a JSON object, not {_kind(data)}")
    return data


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string"}.get(
        type(value), "an array" if isinstance(value, list) else "an object"
    )


class Fields:
    """Typed access to one body's fields, each error naming the field."""

    def __init__(self, data: Mapping[str, Any], known: tuple[str, ...]) -> None:
        for key in data:
            if key not in known:
                raise invalid(key, f"unknown field (known: {', '.join(known)})")
        self.data = data

    def text(self, name: str, limit: int, default: str | None = None) -> str:
        if name not in self.data or (self.data[name] is None and default is not None):
            if default is None:
                raise invalid(name, "missing")
            return default
        value = self.data[name]
        if not isinstance(value, str):
            raise invalid(name, f"must be a string, not {_kind(value)}")
        if len(value) > limit:
            raise invalid(name, f"at most {limit} characters")
        if not value.isprintable():
            raise invalid(name, "control characters are not allowed")
        return value

    def name(self, name: str) -> str:
        value = self.text(name, NAME_CHARS)
        if not import_files.is_valid_principal(value):
            raise invalid(name, f"{value!r} must be 1-64 letters, digits, '_', '.', '-'")
        return value

    def ref(self, name: str, default: str | None = None) -> str:
        value = self.text(name, 200, default)
        if not import_files.is_valid_ref(value):
            raise invalid(name, "at most 200 characters, without '|'")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise invalid(name, f"must be true or false, not {_kind(value)}")
        return value

    def choice(self, name: str, options: tuple[str, ...]) -> str:
        value = self.text(name, NAME_CHARS)
        if value not in options:
            raise invalid(name, f"{value!r} is not one of {', '.join(options)}")
        return value

    def instant(
        self, name: str, zone: ZoneInfo, now: datetime, *, past_only: bool
    ) -> datetime | None:
        """An ISO 8601 date-time (read in the policy's zone without an offset); with
        `past_only`, never ahead of the clock (beyond a few minutes of skew)."""
        if self.data.get(name) is None:
            return None
        text = self.text(name, 64)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise invalid(name, f"{text!r} is not an ISO 8601 date-time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zone)
        if not import_files.in_supported_years(moment):
            raise invalid(name, f"{text!r} is outside the years the rules are kept for")
        if past_only and moment > now + FUTURE_SLACK:
            raise invalid(name, f"{text!r} is in the future; a change is dated when it was made")
        return moment

    def day(self, name: str) -> date | None:
        """A calendar date, YYYY-MM-DD."""
        if self.data.get(name) is None:
            return None
        text = self.text(name, 10)
        try:
            if len(text) != 10:
                raise ValueError(text)
            return date.fromisoformat(text)
        except ValueError:
            raise invalid(name, f"{text!r} is not a date (YYYY-MM-DD)") from None

    def day_or_instant(self, name: str, zone: ZoneInfo, now: datetime) -> date | datetime | None:
        """A date (YYYY-MM-DD) or an ISO 8601 date-time, never ahead of the clock."""
        value = self.data.get(name)
        if isinstance(value, str) and len(value) == 10:
            return self.day(name)
        return self.instant(name, zone, now, past_only=True)


def invalid(field: str, problem: str) -> ApiError:
    return ApiError("invalid_request", f"{field}: {problem}")


@dataclass(frozen=True, slots=True)
class DecisionBody:
    number: str
    campaign: str
    caller_id: str = ""
    channel: str = ""
    call_id: str = ""
    record: bool = True

    FIELDS = ("number", "campaign", "caller_id", "channel", "call_id", "record")

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> DecisionBody:
        # The number and the campaign are the decision's to judge (INVALID_NUMBER,
        # UNKNOWN_CAMPAIGN are answers, audited as FastAGI's are), as long as they are text.
        fields = Fields(data, cls.FIELDS)
        return cls(
            number=fields.text("number", NUMBER_CHARS),
            campaign=fields.text("campaign", NAME_CHARS),
            caller_id=fields.text("caller_id", NUMBER_CHARS, ""),
            channel=fields.text("channel", CHANNEL_CHARS, ""),
            call_id=fields.text("call_id", CHANNEL_CHARS, ""),
            record=fields.flag("record", True),
        )


@dataclass(frozen=True, slots=True)
class OutcomeBody:
    number: str
    campaign: str
    outcome: str
    at: datetime | None = None
    channel: str = ""
    call_id: str = ""

    FIELDS = ("number", "campaign", "outcome", "at", "channel", "call_id")

    @classmethod
    def parse(cls, data: Mapping[str, Any], zone: ZoneInfo, now: datetime) -> OutcomeBody:
        fields = Fields(data, cls.FIELDS)
        return cls(
            number=fields.text("number", NUMBER_CHARS),
            campaign=fields.text("campaign", NAME_CHARS),
            outcome=fields.choice("outcome", tuple(kind.value for kind in OutcomeKind)),
            at=fields.instant("at", zone, now, past_only=True),
            channel=fields.text("channel", CHANNEL_CHARS, ""),
            call_id=fields.text("call_id", CHANNEL_CHARS, ""),
        )


@dataclass(frozen=True, slots=True)
class WithdrawalBody:
    number: str
    principal: str
    at: datetime | None = None

    FIELDS = ("number", "principal", "at")

    @classmethod
    def parse(cls, data: Mapping[str, Any], zone: ZoneInfo, now: datetime) -> WithdrawalBody:
        fields = Fields(data, cls.FIELDS)
        return cls(
            number=fields.text("number", NUMBER_CHARS),
            principal=fields.name("principal"),
            at=fields.instant("at", zone, now, past_only=True),
        )


@dataclass(frozen=True, slots=True)
class ConsentBody:
    number: str
    principal: str
    proof_ref: str
    given_at: datetime | None = None
    expires_at: datetime | None = None
    source: str = ""

    FIELDS = ("number", "principal", "proof_ref", "given_at", "expires_at", "source")

    @classmethod
    def parse(cls, data: Mapping[str, Any], zone: ZoneInfo, now: datetime) -> ConsentBody:
        # The service checks the rest (the proof reference's characters, the dates'
        # order) and says it in one line: dialguard.changes.InvalidChange.
        fields = Fields(data, cls.FIELDS)
        return cls(
            number=fields.text("number", NUMBER_CHARS),
            principal=fields.name("principal"),
            proof_ref=fields.text("proof_ref", MAX_PROOF_REF),
            given_at=fields.instant("given_at", zone, now, past_only=True),
            expires_at=fields.instant("expires_at", zone, now, past_only=False),
            source=fields.text("source", MAX_SOURCE, ""),
        )


@dataclass(frozen=True, slots=True)
class ContractBody:
    number: str
    principal: str
    id: str
    sector: str
    start: date | None = None
    end: date | None = None

    FIELDS = ("number", "principal", "id", "sector", "start", "end")

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> ContractBody:
        fields = Fields(data, cls.FIELDS)
        return cls(
            number=fields.text("number", NUMBER_CHARS),
            principal=fields.name("principal"),
            id=fields.text("id", MAX_CONTRACT_ID),
            sector=fields.choice("sector", tuple(sector.value for sector in Sector)),
            start=fields.day("start"),
            end=fields.day("end"),
        )


@dataclass(frozen=True, slots=True)
class ContractEndBody:
    number: str
    principal: str
    id: str
    at: date | datetime | None = None

    FIELDS = ("number", "principal", "id", "at")

    @classmethod
    def parse(cls, data: Mapping[str, Any], zone: ZoneInfo, now: datetime) -> ContractEndBody:
        fields = Fields(data, cls.FIELDS)
        return cls(
            number=fields.text("number", NUMBER_CHARS),
            principal=fields.name("principal"),
            id=fields.text("id", MAX_CONTRACT_ID),
            at=fields.day_or_instant("at", zone, now),
        )


def reason_of(data: Mapping[str, Any], default: str | None) -> str:
    """The `reason` of a do-not-call change (the only field its bodies have)."""
    return Fields(data, ("reason",)).ref("reason", default)


def explain_flag(query: Mapping[str, str]) -> bool:
    value = query.get("explain", "0")
    if value not in ("0", "1", "true", "false"):
        raise invalid("explain", f"{value[:20]!r} is not 1, 0, true or false")
    return value in ("1", "true")

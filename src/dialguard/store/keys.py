"""Every Redis key dialguard uses, named once (docs/data-model.md describes the layout).

All keys start with the configured prefix, ``P`` here. A number's part of a key is its
E.164 digits (``Number.key``), a principal a validated name, a version an id Redis
allocated: nothing in a key comes from unchecked input.

The Lua scripts never spell a key: they get whole keys through KEYS, version-dependent
bases as formats through ARGV (``string.format(fmt, version)``, Python's ``fmt % v``), and
the parts of a bucketed version from `LUA_PARTS`, generated here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CLEAR",
    "DENSE_KINDS",
    "HASH_KINDS",
    "LISTED",
    "LIST_FIELDS",
    "LIVE_DNC_LIST",
    "LUA_PARTS",
    "OVERFLOW",
    "PRINCIPAL_DNC_LIST",
    "Keys",
    "bucket_bitmap",
    "bucket_set",
    "meta_field",
]

# The imported lists: bucketed numbers, or small hashes of packed entries per number
# prefix and principal (store/packed.py).
DENSE_KINDS = ("dnc", "optout")
HASH_KINDS = ("consent", "contract")
# Fields of the lists index: the version(s) in force of each kind, and ``KIND:meta``.
LIST_FIELDS = (*DENSE_KINDS, *HASH_KINDS)

# The keys under a dense version's base: a bucket's intset or bitmap, the index of its
# buckets, the reasons a file gave, and a scratch key for merging bitmaps.
SET, BITMAP, INDEX, WHY, SCRATCH = "s:", "b:", "idx", "why", "tmp"
# Under a packed version's base (store/packed.py): values too long for a bucket.
OVERFLOW = "x"
# A registry result set holds two dense lists: listed numbers and numbers checked clear.
LISTED, CLEAR = "L", "C"

# How `lists status` names the live do-not-call entries (they are no version of a list).
LIVE_DNC_LIST = "dnc:live"
PRINCIPAL_DNC_LIST = "dnc:principal"

LUA_PARTS = (
    f"local SET, BITMAP, INDEX, WHY, SCRATCH = '{SET}', '{BITMAP}', '{INDEX}', '{WHY}',"
    f" '{SCRATCH}'\nlocal OVERFLOW = '{OVERFLOW}'\n"
)


def meta_field(kind: str) -> str:
    """The lists index's field for a kind's metadata (when, from which file, how many)."""
    return f"{kind}:meta"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    # --- live data, written during the day ------------------------------------------------

    @property
    def dnc_live(self) -> str:
        """Hash: number -> ``added_ms|reason`` (``dnc add``, do-not-call outcomes)."""
        return self.prefix + "dnc:live"

    @property
    def consent_live(self) -> str:
        """Hash: ``number|principal`` -> ``given_ms|expires_ms|proof_ref``: consents added
        live (`consent add`), beside the imported list; the later given answers."""
        return self.prefix + "consent:live"

    @property
    def contract_live(self) -> str:
        """Hash: ``number|principal`` -> JSON: contracts added or ended live, by id (see
        store.facts.merge_contracts)."""
        return self.prefix + "contract:live"

    @property
    def dnc_principal(self) -> str:
        """Hash: ``number|principal`` -> ``added_ms|reason``: a do-not-call that holds for
        one principal's campaigns alone (a VICIdial campaign list, dialguard.vicidial)."""
        return self.prefix + "dnc:principal"

    @property
    def withdrawal(self) -> str:
        """Hash: ``number|principal`` -> withdrawn_ms."""
        return self.prefix + "withdrawal"

    @property
    def refusal(self) -> str:
        """Hash: ``number|principal`` -> refused_ms."""
        return self.prefix + "refusal"

    @property
    def cancelled(self) -> str:
        """Sorted set: ids of attempts cancelled while their read was in doubt."""
        return self.prefix + "cancelled"

    @property
    def applied(self) -> str:
        """Sorted set: ids of the journal's change records Redis has taken, score their ms
        (dialguard.changes; kept APPLIED_KEPT_DAYS)."""
        return self.prefix + "changes:applied"

    def reply(self, digest: str) -> str:
        """String: the answer kept for an HTTP request's Idempotency-Key (dialguard.api);
        `digest` the hex SHA-256 of the token's name and the key, never the key itself."""
        return f"{self.prefix}reply:{digest}"

    def attempts(self, principal: str, number_key: str) -> str:
        """Sorted set: one member per counted attempt, score its ms."""
        return self.attempts_prefix(principal) + number_key

    def attempts_prefix(self, principal: str) -> str:
        """What every attempts key of `principal` starts with, the number's key after it
        (a scrub builds a million of them)."""
        return f"{self.prefix}att:{principal}:"

    # --- the imported lists ---------------------------------------------------------------

    @property
    def index(self) -> str:
        """Hash: the version(s) in force of each list and their metadata."""
        return self.prefix + "lists"

    @property
    def seq(self) -> str:
        return self.prefix + "lists:seq"

    @property
    def building(self) -> str:
        """Set of ``KIND:V``: builds not yet swapped in, or versions not yet freed."""
        return self.prefix + "lists:building"

    def lock(self, kind: str) -> str:
        return f"{self.prefix}lists:lock:{kind}"

    def unlisted(self, lock_version: str) -> str:
        """Numbers removed live while the import holding `lock_version` ran."""
        return self.unlisted_format % lock_version

    def packed(self, kind: str, version: str) -> str:
        """The key prefix of one version of a packed list (consent, contract): its
        buckets (``LNUMBER``: a level digit and the number's leading digits), ``idx``
        (the set of its buckets) and ``x`` (the overflow hash): store/packed.py."""
        return self.packed_format(kind) % version

    @property
    def principals(self) -> str:
        """Hash: principal -> the id the packed lists know it by (never reused)."""
        return self.prefix + "principals"

    def one_hash(self, kind: str, version: str) -> str:
        """One version of a consent or contract list in the one-hash-per-version layout
        of earlier versions (``number|principal`` -> text), which is no longer read."""
        return f"{self.prefix}{kind}:{version}"

    def base(self, kind: str, version: str, part: str = "") -> str:
        """The key prefix of one version of a dense list (`part`: LISTED or CLEAR for
        a registry result set)."""
        return self.base_format(kind, part) % version

    def bases(self, kind: str, version: str) -> list[str]:
        if kind == "optout":
            return [self.base(kind, version, LISTED), self.base(kind, version, CLEAR)]
        if kind == "dnc":
            return [self.base(kind, version)]
        return []

    def legacy(self, kind: str) -> str:
        """The one-hash-per-list layout of earlier versions, which is no longer read."""
        return self.prefix + kind

    # --- formats for the scripts (a version read inside Redis completes them) -------------

    def base_format(self, kind: str, part: str = "") -> str:
        return f"{self._escaped}{kind}:%s:" + (f"{part}:" if part else "")

    def packed_format(self, kind: str) -> str:
        return f"{self._escaped}{kind}:%s:"

    @property
    def unlisted_format(self) -> str:
        return f"{self._escaped}lists:unlisted:%s"

    @property
    def _escaped(self) -> str:
        return self.prefix.replace("%", "%%")


def bucket_set(base: str, bucket: str) -> str:
    return base + SET + bucket


def bucket_bitmap(base: str, bucket: str) -> str:
    return base + BITMAP + bucket

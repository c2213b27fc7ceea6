"""The private Faust, aiokafka and mode names the worker uses, and the upstream functions it
copies, wraps or mirrors, each with the release it was read from.

Invariant: every private name that :mod:`worker.faust_compat` reads, calls or replaces is in
:data:`NAMES`, and every upstream function whose behaviour a patch here depends on is in
:data:`UPSTREAM` with a hash of its source per release it was read in.  The unit tests
(``tests/unit/test_compat_names.py``) hold both to the installed libraries: a name that is
gone, or a function whose source differs from the hash recorded for the installed release,
fails the suite, naming what to re-read.

Why hashes and not version pins: a patch is only as right as the upstream code it was
written against (the fetch loop it copies, the order of the calls it wraps), and a patch
release can change that code without changing any signature.  A hash of
``inspect.getsource`` changes with any edit, so nothing drifts unread.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.errors import IncompatibleLibraryError

__all__ = [
    "DISTRIBUTIONS",
    "NAMES",
    "UPSTREAM",
    "PrivateName",
    "Upstream",
    "allowed_range",
    "incompatible",
    "installed_versions",
    "resolve",
    "source_hash",
]

#: The distributions whose internals are used, by the name pip knows them under.
DISTRIBUTIONS = ("faust-streaming", "aiokafka", "mode-streaming")

#: The releases the names and hashes below were read from (the ones installed by
#: ``make install`` when they were last re-read).
FAUST = "0.15.3"
AIOKAFKA = "0.14.0"
MODE = "0.7.1"


#: How a name is found: an attribute of the class, or assigned to ``self`` (instances only).
Kind = Literal["member", "instance"]


@dataclass(frozen=True)
class PrivateName:
    """One private (or internal) name: ``owner`` has ``name``.

    ``owner`` is ``"module:Qualified.Name"``.  ``kind`` says how the test finds it:
    ``"member"`` (an attribute of the class), ``"instance"`` (assigned to ``self`` in the
    class's or a base class's source, so only instances have it)."""

    library: str
    owner: str
    name: str
    read_from: str
    used_by: str
    kind: Kind = "member"


@dataclass(frozen=True)
class Upstream:
    """An upstream function a patch depends on: ``relation`` is ``"copied"`` (a modified
    copy replaces it), ``"wrapped"`` (replaced by a function that calls it) or
    ``"relied on"`` (called or mirrored as it is).  ``hashes``: release ->
    :func:`source_hash` of the function as read in that release."""

    library: str
    target: str
    relation: Literal["copied", "wrapped", "relied on"]
    used_by: str
    hashes: Mapping[str, str] = field(default_factory=dict)


_CONSUMER = "faust.transport.consumer:Consumer"
_DELEGATE = "faust.transport.consumer:ThreadDelegateConsumer"
_THREAD = "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread"
_RECOVERY = "faust.tables.recovery:Recovery"
_ROCKS = "faust.stores.rocksdb:Store"
_STORE = "faust.stores.base:Store"
_AIOKAFKA = "aiokafka.consumer.consumer:AIOKafkaConsumer"
_SUBSCRIPTION = "aiokafka.consumer.subscription_state"


def _faust(owner: str, name: str, used_by: str, kind: Kind = "member") -> PrivateName:
    return PrivateName("faust-streaming", owner, name, FAUST, used_by, kind)


def _aiokafka(owner: str, name: str, used_by: str, kind: Kind = "member") -> PrivateName:
    return PrivateName("aiokafka", owner, name, AIOKAFKA, used_by, kind)


def _mode(owner: str, name: str, used_by: str, kind: Kind = "member") -> PrivateName:
    return PrivateName("mode-streaming", owner, name, MODE, used_by, kind)


#: Every private or internal name used, with the module of this package that uses it.
NAMES: tuple[PrivateName, ...] = (
    # The fetch loop (bypass) and the partitions it fetches (rebalance).
    _faust(_CONSUMER, "_drain_messages", "bypass"),
    _faust(_CONSUMER, "_read_offset", "bypass, consumer", "instance"),
    _faust(_CONSUMER, "_commit_every", "bypass", "instance"),
    _faust(_CONSUMER, "_n_acked", "bypass", "instance"),
    _faust(_CONSUMER, "_add_gap", "bypass, rebalance"),
    _faust(_CONSUMER, "callback", "bypass", "instance"),
    _faust(_CONSUMER, "suspend_flow", "bypass", "instance"),
    _faust(_CONSUMER, "consumer_stopped_errors", "bypass"),
    _faust(_CONSUMER, "track_message", "bypass"),
    _faust("faust.app.base:App", "consumer_generation_id", "bypass"),
    _faust("faust.app.base:App", "flow_control", "bypass"),
    _faust(_CONSUMER, "perform_seek", "rebalance"),
    _faust(_CONSUMER, "_buffered_partitions", "rebalance", "instance"),
    _faust(_DELEGATE, "_getmany", "rebalance"),
    _faust(_DELEGATE, "_thread", "rebalance, consumer", "instance"),
    _faust(_THREAD, "_ensure_consumer", "rebalance"),
    _faust(_THREAD, "_consumer", "consumer", "instance"),
    _mode("mode.threads:QueueServiceThread", "call_thread", "rebalance"),
    _mode("mode.services:Service", "_stopped", "bypass", "instance"),
    # Table recovery.
    _faust(_RECOVERY, "on_recovery_completed", "recovery"),
    _faust(_RECOVERY, "active_offsets", "recovery", "instance"),
    _faust(_RECOVERY, "active_highwaters", "recovery", "instance"),
    _faust(_RECOVERY, "standby_offsets", "recovery", "instance"),
    _faust(_RECOVERY, "standby_highwaters", "recovery", "instance"),
    _faust(_RECOVERY, "completed", "consumer", "instance"),
    # The RocksDB store under a table.
    _faust("faust.tables.base:Collection", "_data", "stores", "instance"),
    _faust(_ROCKS, "_dbs", "stores", "instance"),
    _faust(_ROCKS, "_db_for_partition", "stores"),
    _faust(_ROCKS, "offset_key", "stores"),
    _faust(_ROCKS, "set_persisted_offset", "stores"),
    _faust(_STORE, "_encode_key", "stores"),
    _faust(_STORE, "_decode_key", "stores"),
    # aiokafka's consumer inside Faust's consumer thread.
    _aiokafka(_AIOKAFKA, "_fetcher", "consumer", "instance"),
    _aiokafka(_AIOKAFKA, "_subscription", "consumer", "instance"),
    _aiokafka("aiokafka.consumer.fetcher:Fetcher", "_fetch_max_wait_ms", "consumer", "instance"),
    _aiokafka(f"{_SUBSCRIPTION}:SubscriptionState", "subscription", "consumer"),
    _aiokafka(f"{_SUBSCRIPTION}:Subscription", "assignment", "consumer"),
    _aiokafka(f"{_SUBSCRIPTION}:Assignment", "state_value", "consumer"),
    _aiokafka(f"{_SUBSCRIPTION}:TopicPartitionState", "has_valid_position", "consumer"),
    _aiokafka(f"{_SUBSCRIPTION}:TopicPartitionState", "position", "consumer"),
)

#: Upstream functions a patch copies, wraps or relies on, with the hash of their source per
#: release read (:func:`source_hash`).  After re-reading a function in a new release, add
#: ``release: hash`` to its entry; keep the older releases' hashes while pyproject allows them.
UPSTREAM: tuple[Upstream, ...] = (
    Upstream("faust-streaming", f"{_CONSUMER}._drain_messages", "copied", "bypass",
             {FAUST: "44a2500309e83c63"}),
    Upstream("faust-streaming", f"{_CONSUMER}.getmany", "relied on", "rebalance",
             {FAUST: "4b168d84882a70d6"}),
    Upstream("faust-streaming", f"{_DELEGATE}._getmany", "wrapped", "rebalance",
             {FAUST: "f9d47aa9010b5ff2"}),
    Upstream("faust-streaming", f"{_THREAD}.getmany", "relied on", "rebalance",
             {FAUST: "26fc5fc9f3b667e1"}),
    Upstream("faust-streaming", f"{_CONSUMER}.pause_partitions", "wrapped", "rebalance",
             {FAUST: "27a1c94bdacd54de"}),
    Upstream("faust-streaming", f"{_CONSUMER}.resume_partitions", "wrapped", "rebalance",
             {FAUST: "afe6b7c02a41d63c"}),
    Upstream("faust-streaming", f"{_CONSUMER}.perform_seek", "wrapped", "rebalance",
             {FAUST: "0e8c130ff4b0afd8"}),
    Upstream("faust-streaming", f"{_CONSUMER}._add_gap", "wrapped", "rebalance",
             {FAUST: "4df2573ded7c1c2c"}),
    Upstream("faust-streaming", f"{_RECOVERY}._resume_streams", "relied on", "rebalance",
             {FAUST: "d986a6710c1aca98"}),
    Upstream("faust-streaming", f"{_RECOVERY}.on_recovery_completed", "wrapped", "recovery",
             {FAUST: "6ef567acf072e46d"}),
    Upstream("faust-streaming", f"{_ROCKS}._set", "relied on", "stores",
             {FAUST: "4227e561e288d941"}),
    Upstream("faust-streaming", f"{_ROCKS}._del", "relied on", "stores",
             {FAUST: "07f42ff3caefffdd"}),
    Upstream("faust-streaming", f"{_ROCKS}._db_for_partition", "relied on", "stores",
             {FAUST: "cb7e67d5f9efc4bc"}),
    Upstream("faust-streaming", f"{_ROCKS}.set_persisted_offset", "relied on", "stores",
             {FAUST: "b4c811926678346e"}),
    Upstream("faust-streaming", f"{_STORE}._encode_key", "relied on", "stores",
             {FAUST: "70702b179cc35028"}),
    Upstream("faust-streaming", f"{_STORE}._decode_key", "relied on", "stores",
             {FAUST: "fcb649a35b6e5f45"}),
    Upstream("faust-streaming", "faust.tables.base:Collection._on_changelog_sent",
             "relied on", "stores",
             {FAUST: "60122c86a120d82c"}),
    Upstream("faust-streaming", "faust.stores.rocksdb:RocksDBOptions.open", "copied", "stores",
             {FAUST: "ff87e92d69e2f487"}),
    Upstream("faust-streaming", "faust.stores.rocksdb:RocksDBOptions.as_options", "relied on",
             "stores", {FAUST: "d2a1bea17736d2eb"}),
    Upstream("aiokafka", "aiokafka.consumer.fetcher:Fetcher._get_actions_per_node",
             "relied on", "consumer",
             {AIOKAFKA: "1dab2cf937d165d0"}),
)


def resolve(target: str) -> Any:
    """The object ``"module:Qualified.name"`` names (imported now)."""
    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def source_hash(target: str) -> str:
    """The first 16 hex digits of the SHA-256 of the source of ``target``."""
    source = inspect.getsource(resolve(target))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def installed_versions() -> dict[str, str]:
    """Release of each of :data:`DISTRIBUTIONS` installed now ("not installed" if absent)."""
    versions = {}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def allowed_range(distribution: str) -> str:
    """The version range of ``distribution`` the installed feedback-worker requires
    (from its package metadata, i.e. pyproject.toml), or "" where it is not known."""
    try:
        requirements = importlib.metadata.requires("feedback-worker") or []
    except importlib.metadata.PackageNotFoundError:
        return ""
    for requirement in requirements:
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*([^;]*)", requirement)
        if match and match.group(1).lower() == distribution and ";" not in requirement:
            bounds = [bound.strip() for bound in match.group(3).split(",") if bound.strip()]
            return ",".join(sorted(bounds, key=lambda bound: not bound.startswith(">")))
    return ""


def incompatible(patch: str, missing: Iterable[str], risk: str) -> IncompatibleLibraryError:
    """The error a correctness patch raises when it cannot install: ``patch`` (its dotted
    name) needs ``missing``; without it ``risk``."""
    read_from = {"faust-streaming": FAUST, "aiokafka": AIOKAFKA, "mode-streaming": MODE}
    installed = ", ".join(f"{name} {version}" for name, version in installed_versions().items())
    supported = ", ".join(
        f"{name}{allowed_range(name) or ' (as faust-streaming requires)'} "
        f"(read from {read_from[name]})"
        for name in DISTRIBUTIONS
    )
    return IncompatibleLibraryError(
        f"{patch} cannot install: it needs {', '.join(missing)}, which the installed "
        f"libraries lack. Without it {risk}. Installed: {installed}. Supported: {supported}. "
        "Install a supported release (pip install -e .) or re-read the upstream code "
        "(worker/faust_compat/names.py) before adapting the patch."
    )

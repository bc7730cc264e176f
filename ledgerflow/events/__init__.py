"""The event log and the run's domain: events, the fold, the codec and the stores.

This package never imports Ray nor the other ledgerflow layers.
"""

from ledgerflow.events._chain import (
    CHAIN_HMAC,
    CHAIN_SHA256,
    KEY_ENV,
    ZERO_HASH,
    chain_step,
    envelope_bytes,
    format_recorded_at,
    head_mac,
    key_from_environment,
    key_id,
    parse_key,
    parse_recorded_at,
    validate_stream_id,
)
from ledgerflow.events._codec import decode_payload, encode_payload, encode_value
from ledgerflow.events._errors import (
    ConcurrencyError,
    EventDecodeError,
    InvalidStreamIdError,
    LedgerflowError,
    LogFormatError,
    LogNotFoundError,
    NotALogError,
    PayloadValidationError,
    RunNotFoundError,
    StoreError,
    TamperedLogError,
    UnknownEventTypeError,
    UsageError,
)
from ledgerflow.events._model import Event, event_class, registered_types, upcaster
from ledgerflow.events._replay import load_run_state, open_store, resolve_home, resolve_store_url
from ledgerflow.events._run_events import *  # noqa: F403
from ledgerflow.events._run_events import TERMINAL_EVENTS, Manifest, NodeSpec, RouteSpec
from ledgerflow.events._sqlite import SqliteEventStore
from ledgerflow.events._state import (
    TERMINAL_STATUSES,
    GateState,
    NodeState,
    PartitionState,
    RunState,
    apply,
    fold,
    snapshot,
)
from ledgerflow.events._store import (
    AppendResult,
    EventStore,
    NewEvent,
    RecordedEvent,
    StreamHead,
    StreamReport,
    VerifyReport,
)

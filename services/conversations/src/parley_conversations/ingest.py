"""Ingest of the gateway's inbound events: ordered per contact, once, with any number of replicas.

Design (the guarantees and why they hold):

1. Partitions. The gateway publishes every event of one contact on the same subject
   `channel_gateway.inbound.<NN>` (NN = crc32(space:channel:contact) mod 16), in provider order.
   Each partition has its own durable pull consumer `conversations--inbound-<NN>`.

2. One owner per partition. A replica consumes a partition only while it holds the PostgreSQL
   advisory lock (CLASS_PARTITION, NN). Each replica holds the locks of ALL the partitions it owns
   on one dedicated connection, the lock connection (taken with pg_try_advisory_lock on it, released
   with pg_advisory_unlock on it once that partition's consumer has stopped and its in-flight batch
   is settled), and it applies every batch in a transaction ON THAT CONNECTION. A batch can
   therefore only commit while its replica still owns the partition: if the replica dies or the
   connection drops, all its locks and the open transaction go together (the replica then gives
   every partition up, and claims again on a new connection), and another replica may take them.
   A partition being released is marked first, under the connection's lock, so nothing of it is
   applied after its unlock. There is never a window with two writers for one partition (fencing by
   construction, no lease clocks).

3. Group commit and order. Each partition's consumer (one batch at a time) fetches a batch (up to
   `ingest_batch_size`), puts it in stream order and hands it to the replica's applier, and waits.
   The applier takes every batch waiting (up to GROUP_MAX_EVENTS events) from all partitions and
   applies the group with ONE contacts resolution and ONE transaction on the lock connection: each
   partition's events in its stream order (partitions never share a contact, so the order between
   partitions does not matter), and every partition's last applied stream sequence
   (`ingest_offsets`) in the same transaction. Batches arriving meanwhile wait for the next group.
   Events at or below the offset are already applied and are only acknowledged. JetStream may hold
   older events of the partition elsewhere (delivered to an owner that died, waiting for ack_wait,
   or nak'ed after a failed batch) while it delivers newer ones: before handing a batch over the
   consumer asks the stream for the next message on the partition's subject after its offset; if
   that is older than the batch, the missing events are read directly from the stream and applied
   first, in the same group. So events of one partition, hence of one contact, are applied strictly
   in stream order, whatever JetStream redelivers and when.

   Failures. A transient failure of the group (contacts down or too slow as a whole, a lost
   connection, a serialization error) fails every batch in it: each is nak'ed and retried, for as
   long as it lasts (the durables' max_deliver outlasts the stream's retention, so the runner never
   dead-letters an inbound event for its delivery count: an event failing behind another one is not
   at fault, and a dead-lettered event would be read back from the stream anyway). A failure that
   concerns one event is the ingest's to settle:
   - A refused identity (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION in its per-item answer),
     an undecodable or unmappable event: set aside at once, dead-lettered, the rest applied.
   - An identity contacts could not resolve for a passing reason (a per-item ABORTED, e.g. a deadlock,
     UNAVAILABLE, e.g. a lost database connection, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED) fails only
     its partition, from the identity's first event in the group on: the other partitions' events and
     its partition's earlier ones commit as usual, and it and everything after it in its partition are
     redelivered, in order (PartitionNotApplied), for as long as it lasts, like an outage. It is never
     dead-lettered for it, and it neither counts toward the identity's attempts nor resets them.
   - An identity contacts fails on its own (any other per-item code, e.g. INTERNAL for a bug with
     that person's data) fails only its partition in the same way. The owner counts the deliveries in
     a row on which the identity failed (a group counts once; events only read back to fill a gap do
     not count: they are still pending and come back as deliveries); at `identity_attempts`
     (PARLEY_INGEST_IDENTITY_ATTEMPTS, 10: about four minutes of backoff) its events are set aside,
     dead-lettered with the contacts error as reason, the partition goes on, and the count starts
     over: a later failure of the identity holds its partition back again before its events are
     dead-lettered. A resolution also starts it over. The count lives with the partition's owner (a
     new owner starts over), for at most MAX_COUNTED_IDENTITIES identities per partition: past that,
     the one that failed least recently is forgotten (it starts over).
   - A group the database can never apply as a whole is applied again event by event, each event
     with its partition's offset in its own transaction: an event that fails for good is
     dead-lettered (one bad event blocks neither its partition nor the others), one that fails
     transiently fails only its own partition's batch from that event on: the partition's events
     committed before it are acknowledged, and those set aside before them dead-lettered (their
     offset is passed), the rest redelivered.

4. Once. The offset makes a redelivered event a no-op; the unique (channel_id,
   provider_message_id) makes a provider's re-sent webhook (a new stream message) a no-op too.

5. Balance. Replicas count each other through advisory locks on (CLASS_MEMBER, slot) that each
   holds while alive; each aims for ceil(16 / replicas) partitions (at most
   `ingest_max_partitions`), releases extras after their current batch, and takes free ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from google.protobuf.message import DecodeError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from parley.channel_gateway.v1 import events_pb2 as gw
from parley.contacts.v1 import contacts_service_pb2 as cpb
from parley.contacts.v1 import contacts_service_pb2_grpc as cpb_grpc
from parley_kit import telemetry
from parley_kit.contracts import channel_gateway as cg
from parley_kit.grpc_client import create_channel
from parley_kit.nats import ConsumerRunner, ConsumerSpec, Delivery, PoisonMessage, TransientError, is_transient
from parley_kit.nats.streams import provision
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley_conversations import mapping, metrics
from parley_conversations.domain import CONTACT_ACTIVITY_KINDS, MESSAGE_KINDS, RECEIPT_KINDS, InboundItem, InboundKind
from parley_conversations.events import inbound_consumer, inbound_durable
from parley_conversations.repository import Repository
from parley_conversations.service import ConversationsService, utcnow

log = logging.getLogger(__name__)
_tracer = telemetry.tracer("parley_conversations.ingest")

CLASS_MEMBER = 0x50430001
CLASS_PARTITION = 0x50430002
MAX_MEMBER_SLOTS = 1024
GAP_LIMIT = 2000
GROUP_MAX_EVENTS = 2000  # most events one group commit takes (at least one partition's batch)
MAX_COUNTED_IDENTITIES = 1000  # identities whose failures one partition's owner counts (least recent forgotten)


IdentityKey = tuple[str, str, str]  # (space_id, channel_id, contact_external_id)


@dataclass
class Resolution:
    """What the contacts service said of a group's identities."""

    ids: dict[IdentityKey, str] = dataclasses.field(default_factory=dict)
    """The contact of each resolved identity."""
    refused: dict[IdentityKey, str] = dataclasses.field(default_factory=dict)
    """Identities contacts refused for good (its final word), with the reason."""
    transient: dict[IdentityKey, str] = dataclasses.field(default_factory=dict)
    """Identities contacts could not resolve this time for a passing reason (a TRANSIENT per-item code)."""
    failed: dict[IdentityKey, str] = dataclasses.field(default_factory=dict)
    """Identities contacts failed on their own (any other per-item code) while it answered the call."""
    reported: dict[IdentityKey, datetime] = dataclasses.field(default_factory=dict)
    """The interaction time reported for each identity contacts was asked about and resolved."""


class ContactsResolver:
    """Finds or creates the contact of each identity in a batch: one ContactsService.UpsertByIdentities
    call per `chunk` identities (the service's maximum, 500), answered per identity."""

    # google.rpc.Code values of per-identity answers that are the contacts service's final word on it.
    REFUSED = frozenset(
        code.value[0]
        for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
    )
    # Per-identity codes of a passing failure (a deadlock, a lost connection, contacts too slow or overloaded):
    # worth waiting out, never the identity's fault.
    TRANSIENT = frozenset(
        code.value[0]
        for code in (
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
    )
    CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}

    def __init__(
        self, channel: grpc.aio.Channel, *, concurrency: int = 16, timeout: float = 5.0, chunk: int = 500
    ) -> None:
        self._stub = cpb_grpc.ContactsServiceStub(channel)
        self._limit = asyncio.Semaphore(concurrency)
        self._timeout = timeout
        self._chunk = chunk

    @classmethod
    def connect(cls, target: str, token: str, timeout: float = 5.0) -> ContactsResolver:
        # UpsertByIdentities is idempotent: an ABORTED (a deadlock in contacts) is retried at once, not redelivered.
        upsert = "parley.contacts.v1.ContactsService/UpsertByIdentities"
        return cls(create_channel(target, token=token, timeout=timeout, retry_aborted=(upsert,)), timeout=timeout)

    async def resolve(
        self,
        items: Sequence[InboundItem],
        known: dict[tuple[str, str], tuple[str, datetime | None]] | None = None,
        report_every: timedelta | None = None,
    ) -> Resolution:
        """The contact of each identity of `items`, or why there is none.

        Receipts need no contact. Other items' identities are upserted (one UpsertByIdentities call per
        chunk of identities, each with the identity's latest interaction time), unless the identity is
        `known` (channel_id, external_id -> contact id and the interaction last reported) and that report
        is less than `report_every` older than this interaction: then the known contact id is used and
        contacts is not called. A per-item refusal (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION) goes
        to `refused`, a passing per-item failure (ABORTED, UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED)
        to `transient`, any other per-item code to `failed`: none fails the other identities. Raises
        TransientError when a call fails as a whole (contacts down or too slow), so nothing is blamed on
        an identity.
        """
        first: dict[IdentityKey, InboundItem] = {}
        interaction: dict[IdentityKey, datetime | None] = {}
        for it in items:
            if it.kind in RECEIPT_KINDS:
                continue
            first.setdefault(it.contact_key, it)
            if it.kind in CONTACT_ACTIVITY_KINDS:
                prev = interaction.get(it.contact_key)
                interaction[it.contact_key] = it.occurred_at if prev is None else max(prev, it.occurred_at)
            else:
                interaction.setdefault(it.contact_key, None)
        out = Resolution()

        def request(key: IdentityKey) -> cpb.UpsertByIdentityRequest:
            it = first[key]
            p = it.profile
            return cpb.UpsertByIdentityRequest(
                space_id=it.space_id,
                channel_id=it.channel_id,
                channel_type=mapping.CHANNEL_TYPE_PB.get(it.channel_type, 0),
                external_id=it.contact_external_id,
                profile=cpb.IdentityProfile(
                    display_name=p.display_name,
                    first_name=p.first_name,
                    last_name=p.last_name,
                    username=p.username,
                    phone=p.phone,
                    language=p.language,
                    avatar_url=p.avatar_url,
                ),
                interaction_at=mapping.ts(interaction.get(key)),
            )

        async def call(keys: list[IdentityKey]) -> None:
            batch = cpb.UpsertByIdentitiesRequest(items=[request(k) for k in keys])
            async with self._limit:
                # Called in the trace of the first event of the chunk's first contact.
                trace_of = first[keys[0]].trace
                token = otel_context.attach(trace_of) if trace_of is not None else None
                try:
                    reply = await self._stub.UpsertByIdentities(batch, timeout=self._timeout)
                except grpc.aio.AioRpcError as exc:
                    if exc.code().value[0] in self.REFUSED:  # the whole call: each of its identities
                        for k in keys:
                            out.refused[k] = f"contacts refused the identity: {exc.code().name}: {exc.details()}"
                        return
                    raise TransientError(
                        f"contacts.UpsertByIdentities failed: {exc.code().name}: {exc.details()}"
                    ) from exc
                finally:
                    if token is not None:
                        otel_context.detach(token)
            if len(reply.results) != len(keys):
                raise TransientError(f"contacts.UpsertByIdentities answered {len(reply.results)} of {len(keys)}")
            for k, result in zip(keys, reply.results, strict=True):
                if not result.error_code:
                    out.ids[k] = result.contact_id
                    continue
                name = self.CODE_NAMES.get(result.error_code, f"code {result.error_code}")
                if result.error_code in self.REFUSED:
                    out.refused[k] = f"contacts refused the identity: {name}: {result.error_message}"
                elif result.error_code in self.TRANSIENT:
                    out.transient[k] = f"contacts could not resolve the identity now: {name}: {result.error_message}"
                else:
                    out.failed[k] = f"contacts failed the identity: {name}: {result.error_message}"

        to_call = []
        for key in first:
            hit = (known or {}).get((key[1], key[2]))
            at = interaction.get(key)
            if hit is not None and report_every is not None:
                contact_id, reported_at = hit
                if at is None or (reported_at is not None and at - reported_at < report_every):
                    out.ids[key] = contact_id
                    continue
            to_call.append(key)
        await asyncio.gather(*(call(to_call[i : i + self._chunk]) for i in range(0, len(to_call), self._chunk)))
        out.reported = {k: at for k in to_call if k in out.ids and (at := interaction.get(k)) is not None}
        return out


@dataclass
class _Unit:
    """One inbound event to apply: from this fetch (delivery) or read from the stream to fill a gap."""

    sequence: int
    event: gw.InboundEvent | None
    delivery: Delivery | None
    error: str = ""


class PartitionNotApplied(TransientError):
    """Not all of a partition's events in a group were applied: those up to stream sequence `committed` were
    (or were set aside for good, to be dead-lettered), the later ones were not (None: none was)."""

    def __init__(self, message: str, committed: int | None) -> None:
        super().__init__(message)
        self.committed = committed


@dataclass(eq=False)
class _Pending:
    """One partition's units waiting for the next group commit, and the future its handler awaits."""

    worker: PartitionWorker
    units: list[_Unit]
    done: asyncio.Future[None]


class PartitionWorker:
    """Consumes one partition while the replica holds its advisory lock on the ingest's lock connection."""

    def __init__(self, owner: InboundIngest, partition: int) -> None:
        self.owner = owner
        self.partition = partition
        self.subject = f"{owner.inbound_prefix}.{partition:02d}"
        self.spec: ConsumerSpec = owner.consumer_spec(partition)
        self.runner: ConsumerRunner | None = None
        self.offset: int | None = None
        self.failed = False  # the lock connection was lost: the partition must be given up
        self.released = False  # the lock is released (or going): nothing more of it may be applied
        # Deliveries, in a row, of events whose identity the contacts service failed (see the module docstring),
        # least recently failed first.
        self.identity_failures: dict[IdentityKey, int] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.runner = ConsumerRunner(
            self.owner.js,
            self.spec,
            self.handle,
            service=self.owner.service_name,
            message_type=gw.InboundEvent,
            batch=True,
            batch_size=self.owner.batch_size,
            fetch_timeout=self.owner.fetch_timeout,
            concurrency=1,
        )
        await self.runner.start()

    async def stop(self) -> None:
        """Stop consuming; returns once the in-flight batch (if any) is settled."""
        if self.runner is not None:
            await self.runner.stop()

    async def handle(self, deliveries: list[Delivery]) -> Mapping[Delivery, BaseException] | None:
        async with self._lock:
            try:
                return await self._handle(deliveries)
            except Exception as exc:
                if not is_transient(exc) and not isinstance(exc, TransientError):
                    log.exception("partition %02d: batch failed", self.partition)
                self.offset = None  # part of the batch may be committed: re-read the offset next time
                raise

    async def _handle(self, deliveries: list[Delivery]) -> Mapping[Delivery, BaseException] | None:
        if self.failed or self.released:
            raise TransientError(f"partition {self.partition:02d} is being released")
        if self.offset is None:
            self.offset = await self.owner.initial_offset(self)
        offset = self.offset
        fresh = sorted((d for d in deliveries if d.stream_sequence > offset), key=lambda d: d.stream_sequence)
        if not fresh:
            return None  # every one already applied: ack them
        units = await self._gap(offset, fresh[0].stream_sequence)
        failures: dict[Delivery, BaseException] = {}
        if len(units) >= GAP_LIMIT:
            # Too many older events to add to this batch: apply them now, retry this fetch later.
            log.warning("partition %02d: %d older events pending; applying them first", self.partition, len(units))
            failures = {d: TransientError("older events of the partition are being applied first") for d in fresh}
            fresh = []
        units += [_Unit(d.stream_sequence, d.message, d) for d in fresh]  # type: ignore[arg-type]
        metrics.INGEST_GAP_FILLED.inc(sum(1 for u in units if u.delivery is None))
        committed = max(u.sequence for u in units)
        try:
            await self.owner.submit(self, units)
        except PartitionNotApplied as exc:
            if exc.committed is None:
                raise
            # The events up to `committed` are settled for good; the later ones are redelivered, in order.
            committed = exc.committed
            failures |= {u.delivery: exc for u in units if u.sequence > committed and u.delivery is not None}
        self.offset = committed
        for u in units:
            if u.error and u.sequence <= committed:
                # Set aside, below the committed offset: dead-letter it now or it would never be seen again.
                metrics.INGEST_POISON.inc()
                if u.delivery is not None:
                    failures[u.delivery] = PoisonMessage(u.error)
                else:
                    await self.owner.dead_letter(self, u)
        return failures or None

    async def _gap(self, offset: int, first: int) -> list[_Unit]:
        """Events of this partition in the stream after `offset` and before `first` (not applied yet)."""
        out: list[_Unit] = []
        seq = offset + 1
        while seq < first and len(out) < GAP_LIMIT:
            try:
                raw = await self.owner.js.get_msg(self.owner.stream, seq=seq, subject=self.subject, next=True)
            except NotFoundError:
                break
            if raw.seq is None or raw.seq >= first:
                break
            event: gw.InboundEvent | None = gw.InboundEvent()
            error = ""
            try:
                event.ParseFromString(raw.data or b"")  # type: ignore[union-attr]
            except DecodeError as exc:
                event, error = None, f"undecodable payload: {exc}"
            unit = _Unit(raw.seq, event, None, error)
            unit.raw = raw  # type: ignore[attr-defined]
            out.append(unit)
            seq = raw.seq + 1
        return out


class InboundIngest:
    """Claims inbound partitions (see the module docstring) and applies their batches in group commits."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        engine: AsyncEngine,
        repo: Repository,
        service: ConversationsService,
        contacts: ContactsResolver,
        service_name: str = "conversations",
        batch_size: int = 200,
        fetch_timeout: float = 1.0,
        ack_wait: float = 30.0,
        rebalance_seconds: float = 2.0,
        max_partitions: int = cg.INBOUND_PARTITIONS,
        partitions: int = cg.INBOUND_PARTITIONS,
        stream: str = cg.STREAM,
        inbound_prefix: str = cg.INBOUND_PREFIX,
        report_every: timedelta | None = timedelta(seconds=60),
        identity_attempts: int = 10,
    ) -> None:
        if identity_attempts < 1:
            raise ValueError("identity_attempts must be at least 1")
        self.js = js
        self.engine = engine
        self.repo = repo
        self.service = service
        self.contacts = contacts
        self.service_name = service_name
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.ack_wait = ack_wait
        self.rebalance_seconds = rebalance_seconds
        self.max_partitions = max_partitions
        self.partitions = partitions
        self.stream = stream
        self.inbound_prefix = inbound_prefix
        self.report_every = report_every
        self.identity_attempts = identity_attempts
        self.workers: dict[int, PartitionWorker] = {}
        self._member: AsyncConnection | None = None
        self._slot: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # The lock connection: holds every owned partition's advisory lock; every group commits on it.
        # `_conn_lock` serializes its users (one statement at a time on one connection).
        self._conn: AsyncConnection | None = None
        self._conn_lock = asyncio.Lock()
        self._pending: list[_Pending] = []
        self._applier: asyncio.Task[None] | None = None

    def consumer_spec(self, partition: int) -> ConsumerSpec:
        return inbound_consumer(partition, ack_wait=self.ack_wait, batch_size=self.batch_size)

    def consumer_specs(self) -> list[ConsumerSpec]:
        return [self.consumer_spec(p) for p in range(self.partitions)]

    # -- life ---------------------------------------------------------------------------------------

    async def start(self, *, provision_consumers: bool = False) -> None:
        """Join the replicas and claim a share of the partitions (the runtime provisions the durables)."""
        if provision_consumers:
            await provision(self.js, [], self.consumer_specs())
        self._member = await self.engine.connect()
        for slot in range(MAX_MEMBER_SLOTS):
            if await self._try_lock(self._member, CLASS_MEMBER, slot):
                self._slot = slot
                break
        else:  # pragma: no cover
            raise RuntimeError("no free ingest member slot")
        await self._member.commit()
        self._stopping.clear()
        await self.rebalance()
        self._task = asyncio.create_task(self._loop(), name="ingest rebalance")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._release_all()
        if self._member is not None:
            with contextlib.suppress(Exception):
                await self._member.close()
        metrics.PARTITIONS_OWNED.set(0)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.rebalance_seconds)
            if self._stopping.is_set():
                return
            try:
                await self.rebalance()
            except Exception:
                log.warning("ingest rebalance failed; retrying", exc_info=True)

    async def rebalance(self) -> None:
        """Give every partition up if the lock connection was lost, release surplus partitions, then claim
        free ones up to this replica's share."""
        if self._conn is not None and (self._conn_broken() or any(w.failed for w in self.workers.values())):
            log.warning("ingest: the partition lock connection was lost; giving up %d partitions", len(self.workers))
            await self._release_all()
        members = max(await self._members(), 1)
        target = min(math.ceil(self.partitions / members), self.max_partitions)
        while len(self.workers) > target:
            await self._release(max(self.workers))
        if len(self.workers) < target:
            start = ((self._slot or 0) * target) % self.partitions
            for i in range(self.partitions):
                if len(self.workers) >= target:
                    break
                p = (start + i) % self.partitions
                if p not in self.workers:
                    await self._claim(p)
        metrics.PARTITIONS_OWNED.set(len(self.workers))

    async def _members(self) -> int:
        assert self._member is not None
        count = await self._member.scalar(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2"
                " AND classid::bigint = :cls"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"cls": CLASS_MEMBER},
        )
        await self._member.commit()
        return int(count or 0)

    def _conn_broken(self) -> bool:
        return self._conn is None or self._conn.invalidated or self._conn.closed

    def _lost_connection(self) -> None:
        """The lock connection is gone, and every partition lock with it: stop applying any of them."""
        for w in self.workers.values():
            w.failed = True

    async def _claim(self, partition: int) -> None:
        async with self._conn_lock:
            if self._conn is None:
                self._conn = await self.engine.connect()
            try:
                locked = await self._try_lock(self._conn, CLASS_PARTITION, partition)
                await self._conn.commit()
            except Exception:
                if self._conn_broken():
                    self._lost_connection()
                raise
        if not locked:
            return
        worker = PartitionWorker(self, partition)
        self.workers[partition] = worker
        try:
            await worker.start()
        except Exception:
            await self._release(partition)
            raise
        log.info("ingest: claimed partition %02d", partition)

    async def _release(self, partition: int) -> None:
        """Stop the partition's consumer, then (its in-flight batch settled) unlock it on the lock connection."""
        worker = self.workers.pop(partition, None)
        if worker is None:
            return
        await worker.stop()
        async with self._conn_lock:
            worker.released = True
            if not self._conn_broken():
                assert self._conn is not None
                try:
                    await self._conn.scalar(
                        text("SELECT pg_advisory_unlock(:c, :k)"), {"c": CLASS_PARTITION, "k": partition}
                    )
                    await self._conn.commit()
                except Exception:
                    log.warning("partition %02d: unlock failed", partition, exc_info=True)
                    if self._conn_broken():
                        self._lost_connection()
        log.info("ingest: released partition %02d", partition)

    async def _release_all(self) -> None:
        """Stop every partition's consumer, then close the lock connection (which releases every lock)."""
        workers = list(self.workers.values())
        self.workers.clear()
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        async with self._conn_lock:
            for w in workers:
                w.released = True
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        for w in workers:
            log.info("ingest: released partition %02d", w.partition)

    @staticmethod
    async def _try_lock(conn: AsyncConnection, cls: int, key: int) -> bool:
        return bool(await conn.scalar(text("SELECT pg_try_advisory_lock(:c, :k)"), {"c": cls, "k": key}))

    # -- group commit ------------------------------------------------------------------------------

    async def initial_offset(self, worker: PartitionWorker) -> int:
        """The partition's committed offset; for a partition never applied, the consumer's ack floor."""
        async with self._conn_lock:
            if worker.failed or worker.released or self._conn_broken():
                raise TransientError(f"partition {worker.partition:02d} is being released")
            assert self._conn is not None
            async with self.repo.on_connection(self._conn) as tx:
                offset = await tx.ingest_offset(worker.partition)
        if offset is not None:
            return offset
        info = await self.js.consumer_info(self.stream, worker.spec.durable)
        return int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0

    async def submit(self, worker: PartitionWorker, units: list[_Unit]) -> None:
        """Apply `units` (one partition's, in stream order) in the next group commit; returns once it is
        committed (each unit's `error` says if it was set aside), raises if it was not."""
        pending = _Pending(worker, units, asyncio.get_running_loop().create_future())
        self._pending.append(pending)
        if self._applier is None or self._applier.done():
            self._applier = asyncio.create_task(self._apply_groups(), name="ingest group commit")
        await pending.done

    async def _apply_groups(self) -> None:
        """While anything is pending: take it all (up to GROUP_MAX_EVENTS) and apply it as one group."""
        while self._pending:
            group: list[_Pending] = []
            size = 0
            while self._pending and (not group or size + len(self._pending[0].units) <= GROUP_MAX_EVENTS):
                group.append(self._pending.pop(0))
                size += len(group[-1].units)
            try:
                failed = await self._apply_group(group)
            except BaseException as exc:
                for p in group:
                    if not p.done.done():
                        p.done.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for p in group:
                if not p.done.done():
                    if p in failed:
                        p.done.set_exception(failed[p])
                    else:
                        p.done.set_result(None)

    async def _apply_group(self, group: list[_Pending]) -> dict[_Pending, BaseException]:
        """Apply the group in one transaction on the lock connection; the partitions that failed on their own."""
        async with self._conn_lock:
            failed: dict[_Pending, BaseException] = {
                p: TransientError(f"partition {p.worker.partition:02d} is being released")
                for p in group
                if p.worker.failed or p.worker.released or p.done.done()
            }
            live = [p for p in group if p not in failed]
            if not live:
                return failed
            if self._conn_broken():
                self._lost_connection()
                raise TransientError("the partition lock connection was lost")
            assert self._conn is not None
            try:
                return failed | await self.apply(self._conn, live)
            except Exception:
                if self._conn_broken():
                    self._lost_connection()
                raise

    async def apply(self, conn: AsyncConnection, group: list[_Pending]) -> dict[_Pending, BaseException]:
        """Resolve the group's contacts, then apply every unit in one transaction on `conn`.

        Each event gets its own CONSUMER span (`process <subject>`, child of its producer's context, as
        docs/telemetry.md asks of batch consumers); its contacts call, its `store message` span and the
        events it causes (through their outbox rows) descend from it."""
        spans: list[Span] = []
        try:
            return await self._apply_traced(conn, group, spans)
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            for span in spans:
                span.end()

    async def _apply_traced(
        self, conn: AsyncConnection, group: list[_Pending], spans: list[Span]
    ) -> dict[_Pending, BaseException]:
        triples: list[tuple[_Pending, _Unit, InboundItem]] = []
        for p in group:
            for u in p.units:
                if u.event is None:
                    continue
                span = self._event_span(p.worker, u)
                spans.append(span)
                try:
                    item = mapping.inbound_item(u.event)
                except ValueError as exc:
                    u.error = str(exc)
                    continue
                triples.append((p, u, dataclasses.replace(item, trace=trace.set_span_in_context(span))))
        started = time.perf_counter()
        items = [it for _, _, it in triples]
        known: dict[tuple[str, str], tuple[str, datetime | None]] = {}
        if self.report_every is not None and items:
            known = await self.repo.identities(conn, ((it.channel_id, it.contact_external_id) for it in items))
        resolution = await self._with_retries(lambda: self.contacts.resolve(items, known, self.report_every))
        metrics.INGEST_SECONDS.labels("contacts").observe(time.perf_counter() - started)
        for _, u, it in triples:
            if it.contact_key in resolution.refused:
                u.error = resolution.refused[it.contact_key]
        stops = self._isolate([t for t in triples if not t[1].error], resolution)
        triples = [t for t in triples if not t[1].error and (t[0] not in stops or t[1].sequence < stops[t[0]][0])]
        contact_ids, reported = resolution.ids, resolution.reported
        stores = {
            it.event_id: _tracer.start_span("store message", context=it.trace, kind=SpanKind.INTERNAL)
            for _, _, it in triples
            if it.kind in MESSAGE_KINDS
        }
        spans.extend(stores.values())
        started = time.perf_counter()
        offsets: dict[int, int] = {}  # per partition, the last stream sequence to commit
        for p in group:
            kept = [u.sequence for u in p.units if p not in stops or u.sequence < stops[p][0]]
            if kept:
                offsets[p.worker.partition] = max(kept)
        outcomes: dict[str, tuple[str | None, str | None, bool, bool]] = {}
        failed: dict[_Pending, BaseException] = {}
        applied: dict[_Pending, int] = {}  # one by one: the last stream sequence committed per partition
        try:
            outcomes = await self._apply_db(conn, [it for _, _, it in triples], contact_ids, reported, offsets)
        except Exception as exc:
            if _retryable(exc) or conn.invalidated or conn.closed:
                raise TransientError(f"group of {len(group)} partitions not applied ({exc})") from exc
            # Something in the group can never be applied: apply its events one by one (each with its
            # partition's offset) and set aside (dead-letter) those that fail, so one bad event blocks
            # neither its partition nor the others. A transient failure fails only its own partition.
            log.warning("ingest: group of %d partitions failed (%s); applying its events one by one", len(group), exc)
            for p, u, it in triples:
                if p in failed:
                    continue
                try:
                    one_offset = {p.worker.partition: u.sequence}
                    outcomes |= await self._apply_db(conn, [it], contact_ids, reported, one_offset)
                    applied[p] = u.sequence
                except Exception as one:
                    if conn.invalidated or conn.closed:
                        raise TransientError(f"partition {p.worker.partition:02d}: event not applied ({one})") from one
                    if _retryable(one):
                        # Its earlier events are committed (and any set aside before the last of those must
                        # be dead-lettered): the partition's handler settles them and retries the rest.
                        failed[p] = PartitionNotApplied(
                            f"partition {p.worker.partition:02d}: event not applied ({one})", applied.get(p)
                        )
                        continue
                    u.error = f"cannot be applied: {type(one).__name__}: {one}"[:1000]
            rest = {part: seq for part, seq in offsets.items() if not any(p.worker.partition == part for p in failed)}
            async with self.repo.on_connection(conn) as tx:
                await tx.set_ingest_offsets(rest, utcnow())
        for p, (first, reason) in stops.items():
            # Its events before `first` are committed; `first` and the rest are retried, in order.
            committed = offsets.get(p.worker.partition)
            failed.setdefault(
                p, PartitionNotApplied(f"partition {p.worker.partition:02d}: #{first}: {reason}", committed)
            )
        metrics.INGEST_SECONDS.labels("database").observe(time.perf_counter() - started)
        metrics.INGEST_BATCH.observe(sum(len(p.units) for p in group))
        metrics.INGEST_GROUP_PARTITIONS.observe(len(group))
        now = utcnow()
        for p, u, it in triples:
            outcome = outcomes.get(it.event_id)
            store = stores.get(it.event_id)
            if store is not None and outcome is not None:
                conversation_id, message_id, opened, duplicate = outcome
                store.set_attributes(
                    {
                        "parley.conversation_id": conversation_id or "",
                        "parley.message_id": message_id or "",
                        "parley.message.direction": "outbound" if it.kind == InboundKind.ECHO else "inbound",
                        "parley.conversation.opened": opened,
                        "parley.duplicate": duplicate,
                    }
                )
                if not duplicate and it.kind == InboundKind.MESSAGE and it.received_at is not None:
                    metrics.TIME_TO_VISIBILITY.labels(it.channel_type).observe(
                        max((now - it.received_at).total_seconds(), 0.0)
                    )
            if store is not None and (u.error or _not_applied(failed.get(p), u.sequence)):
                store.set_status(Status(StatusCode.ERROR, "dead-lettered" if u.error else "not applied"))
        return failed

    def _isolate(
        self, triples: list[tuple[_Pending, _Unit, InboundItem]], resolution: Resolution
    ) -> dict[_Pending, tuple[int, str]]:
        """Keep an identity the contacts service failed from stalling anything but its partition.

        Its partition stops at the identity's first event (returned: partition -> that stream sequence and
        the reason). A passing failure (`resolution.transient`) does so every time, uncounted. A failure of
        its own (`resolution.failed`) does so until the identity has failed on `identity_attempts`
        deliveries in a row of this partition's owner: then its events are set aside (dead-lettered), the
        partition goes on and the count starts over. A delivery counts once per group; an event only read
        from the stream to fill a gap does not count (it is still pending, so it comes back as a delivery).
        An identity resolved again starts over too. `triples` are in stream order per partition, receipts
        included (they need no contact)."""
        stops: dict[_Pending, tuple[int, str]] = {}
        units_of: dict[IdentityKey, list[_Unit]] = {}  # an identity's events, all on one partition
        for p, u, it in triples:
            if it.kind in RECEIPT_KINDS:
                continue
            units_of.setdefault(it.contact_key, []).append(u)
            if it.contact_key in resolution.ids:
                p.worker.identity_failures.pop(it.contact_key, None)
        for p, u, it in triples:
            key = it.contact_key
            passing = resolution.transient.get(key)
            reason = passing or resolution.failed.get(key)
            if reason is None or u is not units_of[key][0] or p in stops:
                continue  # resolved, not its first event, or after its partition's stop (retried with it)
            if passing is not None:
                stops[p] = (u.sequence, reason)
                metrics.INGEST_IDENTITY_FAILURES.labels("transient").inc()
                log.warning("partition %02d: #%d: %s; waiting for it", p.worker.partition, u.sequence, reason)
                continue
            failures = p.worker.identity_failures
            count = failures.pop(key, 0) + any(v.delivery is not None for v in units_of[key])
            if count >= self.identity_attempts:  # dead-lettered, and no longer counted: a new failure starts over
                for v in units_of[key]:
                    v.error = f"{reason} (on {count} deliveries in a row)"[:1000]
                metrics.INGEST_IDENTITY_FAILURES.labels("dead_lettered").inc()
                log.error(
                    "partition %02d: %s; dead-lettering its %d events", p.worker.partition, reason, len(units_of[key])
                )
            else:
                failures[key] = count  # (re)inserted last: the dict stays in least-recently-failed order
                if len(failures) > MAX_COUNTED_IDENTITIES:
                    del failures[next(iter(failures))]
                stops[p] = (u.sequence, reason)
                metrics.INGEST_IDENTITY_FAILURES.labels("retried").inc()
                log.warning("partition %02d: #%d: %s; retrying from it", p.worker.partition, u.sequence, reason)
        return stops

    def _event_span(self, worker: PartitionWorker, unit: _Unit) -> Span:
        """`process <subject>`, child of the event's producer span (from its NATS headers)."""
        if unit.delivery is not None:
            parent = unit.delivery.trace_context
            msg_id, delivered = unit.delivery.msg_id, unit.delivery.num_delivered
        else:
            headers = dict(getattr(getattr(unit, "raw", None), "headers", None) or {})
            parent, msg_id, delivered = telemetry.extract(headers), headers.get("Nats-Msg-Id", ""), 0
        return _tracer.start_span(
            f"process {worker.subject}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.destination.name": worker.subject,
                "messaging.consumer.group.name": worker.spec.durable,
                "messaging.message.id": msg_id,
                "messaging.message.delivery_count": delivered,
            },
        )

    async def _apply_db(
        self,
        conn: AsyncConnection,
        items: list[InboundItem],
        contact_ids: dict[tuple[str, str, str], str],
        reported: dict[tuple[str, str, str], datetime],
        offsets: dict[int, int],
    ) -> dict[str, tuple[str | None, str | None, bool, bool]]:
        """One transaction on the lock connection: the events, then the partitions' offsets. A unique-key
        race with the API (an agent opening the same conversation) is retried at once: the retry sees it."""
        for attempt in range(3):
            try:
                async with self.repo.on_connection(conn) as tx:
                    stats = await self.service.apply_inbound(tx, items, contact_ids, reported)
                    await tx.set_ingest_offsets(offsets, utcnow())
            except IntegrityError as exc:
                if attempt == 2 or not _unique_violation(exc):
                    raise
                continue
            metrics.INGEST_DUPLICATES.inc(stats.duplicates)
            metrics.INGEST_UNMATCHED.inc(stats.unmatched)
            return stats.outcomes
        raise AssertionError("unreachable")

    @staticmethod
    async def _with_retries(call, attempts: int = 3):  # type: ignore[no-untyped-def]
        delay = 0.2
        for attempt in range(attempts):
            try:
                return await call()
            except TransientError:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(delay)
                delay *= 3
        raise AssertionError("unreachable")

    async def dead_letter(self, worker: PartitionWorker, unit: _Unit) -> None:
        """Dead-letter an event read from the stream (not delivered to us) that can never be applied."""
        raw = getattr(unit, "raw", None)
        headers = {
            "Parley-Dead-Letter-Reason": unit.error[:1000],
            "Parley-Original-Subject": worker.subject,
            "Parley-Original-Stream": self.stream,
            "Parley-Original-Sequence": str(unit.sequence),
            "Parley-Consumer": worker.spec.durable,
            "Nats-Msg-Id": f"{worker.spec.durable}:{self.stream}:{unit.sequence}",
        }
        try:
            await self.js.publish(worker.spec.dead_letter_subject, (raw.data if raw else b"") or b"", headers=headers)
        except Exception:
            log.exception("partition %02d: could not dead-letter #%d", worker.partition, unit.sequence)
        log.error("partition %02d: dead-lettered #%d: %s", worker.partition, unit.sequence, unit.error)


def _not_applied(failure: BaseException | None, sequence: int) -> bool:
    """Whether the event at `sequence` of a partition that failed with `failure` was left for redelivery."""
    if failure is None:
        return False
    committed = failure.committed if isinstance(failure, PartitionNotApplied) else None
    return committed is None or sequence > committed


def _unique_violation(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == "23505"


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransientError) or is_transient(exc) or _unique_violation(exc)


def partition_durables(partitions: int = cg.INBOUND_PARTITIONS) -> list[str]:
    return [inbound_durable(p) for p in range(partitions)]

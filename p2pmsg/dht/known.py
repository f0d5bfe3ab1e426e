"""The peer records a node has seen: validated once, handed out in answers.

FIND_NODE answers carry signed peer records, so a node keeps the newest
record it has seen per node id. Records of its routing-table peers are
pinned apart from the bounded cache of all others, so that a flood of valid
records (STOREs, replies) cannot push them out and blind its answers; an
older record never replaces a newer one (replays). Validation is cached by
the record's bytes until expiry, because the same records come back in many
replies. Pure: time is a parameter; ``in_table`` asks the routing table.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from p2pmsg.dht import records as rec
from p2pmsg.dht.peer import Peer, prefix_of_endpoint
from p2pmsg.endpoint import Endpoint
from p2pmsg.errors import RemoteProtocolError


class KnownPeers:
    def __init__(
        self, local_id: bytes, in_table: Callable[[bytes], bool], *, capacity: int = 4096
    ) -> None:
        self.local_id = local_id
        self.capacity = capacity
        self._in_table = in_table
        self._known: OrderedDict[bytes, bytes] = OrderedDict()  # node id -> record bytes
        self._pinned: dict[bytes, bytes] = {}  # the same, for routing-table peers
        self._validated: OrderedDict[bytes, tuple[Peer, int]] = OrderedDict()

    def record_of(self, node_id: bytes) -> bytes | None:
        return self._pinned.get(node_id) or self._known.get(node_id)

    def pin(self, node_id: bytes, table_size: int) -> None:
        """``node_id`` joined the routing table: keep its record with the pinned ones."""
        if node_id in self._known:
            self._pinned[node_id] = self._known.pop(node_id)
        if len(self._pinned) > 2 * table_size + 32:
            self._pinned = {k: v for k, v in self._pinned.items() if self._in_table(k)}

    def remember(self, record: rec.Record) -> None:
        """Keep ``record`` unless a record with the same or a higher seq is kept."""
        previous = self.record_of(record.key)
        if previous is not None and rec.decode(previous).seq >= record.seq:
            return
        if self._in_table(record.key):
            self._pinned[record.key] = rec.encode(record)
            self._known.pop(record.key, None)
            return
        self._known[record.key] = rec.encode(record)
        self._known.move_to_end(record.key)
        while len(self._known) > self.capacity:
            self._known.popitem(last=False)

    def peer_from_bytes(self, data: bytes, now: float) -> Peer | None:
        """A valid peer record (not ours, with endpoints; any copy) as a Peer
        whose prefix comes from its first endpoint, or None. The record is
        remembered when it is the one at the node id."""
        cached = self._validated.get(data)
        if cached is not None and cached[1] > now:
            self._validated.move_to_end(data)
            return cached[0]
        try:
            record = rec.decode(data)
            rec.validate(record, now)
            info = rec.decode_peer_info(record.value)
        except RemoteProtocolError:
            return None
        if record.type is not rec.RecordType.PEER or not info.endpoints:
            return None
        peer = rec.peer_from_record(record, prefix_of_endpoint(Endpoint.parse(info.endpoints[0])))
        if peer.node_id == self.local_id:
            return None
        if record.key == peer.node_id:  # its copies (rec.peer_keys) are for lookups only
            self.remember(record)
        self._validated[data] = (peer, record.expires)
        while len(self._validated) > self.capacity:
            self._validated.popitem(last=False)
        return peer

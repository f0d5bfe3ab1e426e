"""The Kademlia DHT: sans-IO routing table, lookups, records and RPC codec."""
